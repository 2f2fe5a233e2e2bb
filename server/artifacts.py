"""Where a model's exported artifacts and generated repository live, and making them on demand."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from export import pipeline
from export.manifest import ManifestError, load_manifest
from sam3_spec import COMPONENTS
from server.triton import cache_root


def model_slug(model: str) -> str:
    """A directory-safe name for a model argument ("tiny", an HF id or a path)."""
    path = Path(model).expanduser()
    base = path.resolve().name if path.exists() else model
    return re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("_") or "model"


def artifacts_dir(model: str) -> Path:
    """Default artifacts dir of ``model``: <cache>/models/<slug>/onnx."""
    return cache_root() / "models" / model_slug(model) / "onnx"


def ensure_artifacts(model: str, out: Path, token: str | None = None, verify: bool = True) -> Path:
    """Export ``model`` into ``out`` unless a valid manifest for it is already there."""
    try:
        manifest = load_manifest(out, check_hashes=False)
        if manifest.model == model and set(manifest.components) == set(COMPONENTS):
            return out
    except ManifestError as err:
        if (out / "manifest.json").is_file():  # a stale or broken export, not a first run: say why it is redone
            print(f"exporting {model} again: {err}", file=sys.stderr, flush=True)
    try:
        pipeline.export_onnx(model, out, token=token)
        if verify:
            pipeline.verify(out, token)
    except ImportError as err:  # torch/transformers are the export extra
        raise SystemExit(
            f"{out} has no exported model and export needs the [export] extra: pip install -e '.[export]' ({err})"
        ) from err
    return out
