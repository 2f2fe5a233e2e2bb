"""Build layout on the Volume: one directory per (model, revision, TensorRT, GPU), a marker written
last, and a pointer per (model, TensorRT, GPU) naming the build a server with that pair serves.

    <root>/builds/<model>/<revision sha>/trt-<TensorRT>/<GPU>/{artifacts,engines,repository,BUILD_DONE.json}
    <root>/current/<model>/trt-<TensorRT>/<GPU>.json
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from export.manifest import ManifestError, load_manifest, sha256
from export.trt import TRITON_IMAGE, engine_dir, sanitize

BUILD_DONE = "BUILD_DONE.json"
REPORT = "report.json"
BUILD_HINT = "run `modal run modal_triton.py::build` (it builds on {gpu} with TensorRT {tensorrt}); see docs/DEPLOY.md"


class BuildMissingError(RuntimeError):
    """No complete build for this model / TensorRT / GPU on the Volume; says how to make one."""


@dataclass(frozen=True)
class BuildKey:
    """What an engine depends on: model id, resolved revision, TensorRT version, GPU name."""

    model: str
    revision: str
    tensorrt: str
    gpu: str

    def directory(self, root) -> Path:
        """``root/builds/<model>/<revision>/trt-<version>/<gpu>`` (all parts sanitized)."""
        parts = (sanitize(self.model), sanitize(self.revision), f"trt-{sanitize(self.tensorrt)}", sanitize(self.gpu))
        return Path(str(root), "builds", *parts)


@dataclass(frozen=True)
class BuildPaths:
    """The parts of one build directory."""

    root: Path
    key: BuildKey

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def engines(self) -> Path:
        return engine_dir(self.root / "engines", self.key.tensorrt, self.key.gpu)

    @property
    def repository(self) -> Path:
        return self.root / "repository"

    @classmethod
    def of(cls, volume_root, key: BuildKey) -> BuildPaths:
        return cls(key.directory(volume_root), key)


def pointer_path(volume_root, model: str, tensorrt: str, gpu: str) -> Path:
    """``root/current/<model>/trt-<version>/<gpu>.json``: the build a server with this TensorRT + GPU serves."""
    return Path(str(volume_root)) / "current" / sanitize(model) / f"trt-{sanitize(tensorrt)}" / f"{sanitize(gpu)}.json"


def done_marker(key: BuildKey, engine_hashes: dict[str, str]) -> dict:
    """Contents of BUILD_DONE.json, written last, once every stage of a build has passed."""
    return {
        "key": asdict(key),
        "engines": dict(engine_hashes),
        "triton_image": TRITON_IMAGE,
        "finished_unix": int(time.time()),
    }


def build_is_complete(paths: BuildPaths) -> bool:
    """True if BUILD_DONE matches the key, the artifacts match their manifest hashes, every
    engine matches its recorded sha256 and the repository exists."""
    marker = paths.root / BUILD_DONE
    if not marker.is_file() or not paths.repository.is_dir():
        return False
    data = json.loads(marker.read_text())
    if data.get("key") != asdict(paths.key) or not data.get("engines"):
        return False
    try:
        load_manifest(paths.artifacts, check_hashes=True)
    except ManifestError:
        return False
    plans = {name: paths.engines / f"{name}.plan" for name in data["engines"]}
    return all(p.is_file() and sha256(p) == data["engines"][n] for n, p in plans.items())


def write_json(path: Path, data: dict) -> None:
    """Write JSON through a temp file + rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def point_current(volume_root, paths: BuildPaths) -> Path:
    """Make ``paths`` the build served on its TensorRT version + GPU; return the pointer file."""
    pointer = pointer_path(volume_root, paths.key.model, paths.key.tensorrt, paths.key.gpu)
    relative = paths.root.relative_to(Path(str(volume_root)))
    write_json(pointer, {"key": asdict(paths.key), "directory": str(relative)})
    return pointer


def locate_build(volume_root, model: str, tensorrt: str, gpu: str) -> BuildPaths:
    """The finished build to serve for (model, TensorRT, GPU); BuildMissingError otherwise."""
    pointer = pointer_path(volume_root, model, tensorrt, gpu)
    hint = BUILD_HINT.format(gpu=gpu, tensorrt=tensorrt)
    if not pointer.is_file():
        raise BuildMissingError(f"no build of {model} for TensorRT {tensorrt} on {gpu} ({pointer} missing): {hint}")
    data = json.loads(pointer.read_text())
    key = BuildKey(**data["key"])
    paths = BuildPaths(Path(str(volume_root)) / data["directory"], key)
    if (key.model, key.tensorrt, key.gpu) != (model, tensorrt, gpu) or not (paths.root / BUILD_DONE).is_file():
        raise BuildMissingError(f"{pointer} names an unfinished or different build ({key}): {hint}")
    return paths


def export_command(step: str, checkpoint: str, out: Path) -> list[str]:
    """``python -m export onnx|verify --model <checkpoint> --out <artifacts>`` (checkpoint: HF
    snapshot dir, local dir or "tiny"); verify writes the ONNX vs transformers parity report."""
    if step not in ("onnx", "verify"):
        raise ValueError(f"step must be 'onnx' or 'verify', got {step!r}")
    return [sys.executable, "-m", "export", step, "--model", str(checkpoint), "--out", str(out)]


def build_report(paths: BuildPaths, records: dict[str, dict], onnx_parity) -> dict:
    """The parity/latency report stored as report.json beside a build."""
    keys = ("built_precision", "rules", "attempts", "precision", "build_seconds", "fp32_layers", "latency", "parity")
    engines = {name: {k: rec.get(k) for k in keys} for name, rec in records.items()}
    return {
        "key": asdict(paths.key),
        "triton_image": TRITON_IMAGE,
        "engines": engines,
        "onnx_vs_transformers": onnx_parity,
    }
