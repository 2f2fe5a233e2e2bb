"""Where engines live and how their records say what built them (pure, no TensorRT).

Engines only load in the TensorRT version that built them, on the GPU model they were tuned
for, so they live in ``<root>/trt-<version>/<gpu name>/<component>.plan`` beside a
``<component>.plan.json`` record (ONNX hash, precision, rule set, parity, latency).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from export.manifest import sha256

ENGINE_SUFFIX = ".plan"
RECORD_SUFFIX = ".plan.json"
ENGINES_SUMMARY = "engines.json"
TIMING_CACHE = "timing.cache"


def sanitize(name: str) -> str:
    """A path-safe name: runs of characters other than [A-Za-z0-9._-] become one '-'."""
    clean = re.sub(r"[^A-Za-z0-9._-]+", "-", str(name)).strip("-.")
    if not clean:
        raise ValueError(f"cannot make a file name from {name!r}")
    return clean


def engine_dir(root: Path, trt_version: str, gpu_name: str) -> Path:
    """``root/trt-<version>/<gpu>``, e.g. root/trt-10.8.0.43/NVIDIA-H200."""
    return Path(root) / f"trt-{sanitize(trt_version)}" / sanitize(gpu_name)


def engine_path(directory: Path, component: str) -> Path:
    """``directory/<component>.plan`` (the name export.repository looks for)."""
    return Path(directory) / f"{sanitize(component)}{ENGINE_SUFFIX}"


def record_path(directory: Path, component: str) -> Path:
    """``directory/<component>.plan.json``: how the engine was built and its parity."""
    return Path(directory) / f"{sanitize(component)}{RECORD_SUFFIX}"


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file + rename (no half-written engines)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def engine_is_current(
    directory: Path, component: str, onnx_sha256: str, precision: str, trt_version: str, rules_key: str | None = None
) -> bool:
    """True if the engine and its record exist, match these inputs, and the engine hash matches.

    rules_key (rules.attempts_key): when given, the record must have been built by the same
    attempts and precision rules, so editing a rule set rebuilds the engines it touches.
    """
    engine, record = engine_path(directory, component), record_path(directory, component)
    if not (engine.is_file() and record.is_file()):
        return False
    data = json.loads(record.read_text())
    wanted = {"onnx_sha256": onnx_sha256, "precision": precision, "tensorrt_version": trt_version}
    if rules_key is not None:
        wanted["rules_key"] = rules_key
    return all(data.get(k) == v for k, v in wanted.items()) and data.get("engine_sha256") == sha256(engine)


def load_timing_cache(path: Path) -> bytes:
    """Bytes of a TensorRT timing cache file, b"" when absent (TensorRT starts an empty one)."""
    path = Path(path)
    return path.read_bytes() if path.is_file() else b""


def save_timing_cache(path: Path, data: bytes) -> None:
    """Store the serialized timing cache atomically."""
    write_atomic(path, bytes(data))
