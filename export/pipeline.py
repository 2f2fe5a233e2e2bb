"""The export steps behind ``python -m export``: onnx, verify (and trt, in export/trt/).

``export_onnx`` writes ``<component>.onnx``, ``tokenizer.json`` and ``manifest.json`` into
the output directory; ``verify`` writes ``parity_report.json`` and raises ParityError if any
output is outside tolerance.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

from export.checkpoint import config_summary, dims_from_config, load_models, resolve_checkpoint
from export.manifest import PARITY_NAME, TOKENIZER_NAME, Manifest, file_entry, load_manifest
from export.patches import export_patches
from export.tokenizer import build_tokenizer_json
from sam3_spec import COMPONENTS, component_specs


def log(message: str) -> None:
    """Progress line on stderr, flushed (long steps print before and after)."""
    print(f"[export {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def tool_versions() -> dict[str, str]:
    import onnx  # noqa: PLC0415 (optional: export extra)
    import onnxruntime  # noqa: PLC0415 (heavy: onnxruntime)
    import torch  # noqa: PLC0415 (optional: export extra)
    import transformers  # noqa: PLC0415 (optional: export extra)

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def export_onnx(
    model: str,
    out: Path,
    components=COMPONENTS,
    opset: int = 18,
    token: str | None = None,
    cache_dir: Path | None = None,
) -> Manifest:
    """Export the chosen components of ``model`` (HF id, dir or "tiny") into ``out``."""
    from export.onnx_export import export_component  # noqa: PLC0415 (imports torch: export extra)
    from export.wrappers import build_wrappers  # noqa: PLC0415 (imports torch: export extra)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = resolve_checkpoint(model, Path(cache_dir or out))
    log(f"loading {checkpoint}")
    detector, tracker = load_models(checkpoint, token)
    dims = dims_from_config(detector)
    wrappers, specs = build_wrappers(detector, tracker), component_specs(dims, components)
    manifest = _previous_manifest(out, model, dims)
    for name, spec in specs.items():
        log(f"exporting {name} ({sum(p.numel() for p in wrappers[name].parameters()) / 1e6:.1f}M params) ...")
        with export_patches(dims.grid):
            seconds = export_component(wrappers[name], spec, out / spec.onnx_file, dims.image_size, opset)
        manifest.components[name] = {**file_entry(out / spec.onnx_file), "export_seconds": round(seconds, 1)}
        log(f"exported {name} in {seconds:.1f}s ({manifest.components[name]['bytes'] / 1e6:.1f} MB)")
    build_tokenizer_json(out / TOKENIZER_NAME)
    manifest.versions, manifest.config_summary = tool_versions(), config_summary(detector, tracker)
    manifest.revision = _revision(detector)
    manifest.save(out)
    log(f"wrote {out / 'manifest.json'}")
    return manifest


def _previous_manifest(out: Path, model: str, dims) -> Manifest:
    """Keep entries of components exported earlier into ``out`` for the same model and dims."""
    try:
        old = load_manifest(out)
    except Exception:  # no or unusable previous manifest: start fresh
        return Manifest(model=model, revision="", dims=dims)
    keep = old.components if (old.model, old.dims) == (model, dims) else {}
    return Manifest(model=model, revision="", dims=dims, components=dict(keep))


def _revision(detector) -> str:
    return str(getattr(detector.config, "_commit_hash", None) or "local")


def verify(out: Path, token: str | None = None, atol: float = 1e-4, rtol: float = 1e-4, components=COMPONENTS) -> list:
    """ORT vs PyTorch for the chosen exported components (2 shapes each) + the chains they complete."""
    from export.parity import (  # noqa: PLC0415 (imports torch: export extra)
        Tolerance,
        check_component,
        concept_chain,
        ort_session,
        prompt_chain,
        raise_on_failures,
    )
    from export.wrappers import build_wrappers  # noqa: PLC0415 (imports torch: export extra)

    out = Path(out)
    manifest = load_manifest(out, check_hashes=True)
    detector, tracker = load_models(resolve_checkpoint(manifest.model, out), token)
    specs = {name: spec for name, spec in manifest.specs().items() if name in components}
    wrappers, tol = build_wrappers(detector, tracker), Tolerance(atol, rtol)
    sessions = {name: ort_session(out / spec.onnx_file) for name, spec in specs.items()}
    diffs = []
    for name, spec in specs.items():
        log(f"parity {name} at {len(spec.parity_sizes)} shapes")
        diffs += check_component(wrappers[name], spec, sessions[name], manifest.dims.image_size, tol)
    if {"vision", "text", "concept", "mask"} <= specs.keys():
        log("chain vision→text→concept→mask vs Sam3Model")
        diffs += concept_chain(detector, sessions, specs, manifest.dims, tol)
    if {"vision", "prompt"} <= specs.keys():
        log("chain vision→prompt vs Sam3TrackerModel")
        diffs += prompt_chain(tracker, sessions, specs, manifest.dims, tol)
    _write_report(out, manifest, diffs, tol)
    raise_on_failures(diffs)
    return diffs


def _write_report(out: Path, manifest: Manifest, diffs, tol) -> None:
    from export.parity import report  # noqa: PLC0415 (imports torch: export extra)

    rows = report(diffs)
    data = {
        "model": manifest.model,
        "tolerance": {"atol": tol.atol, "rtol": tol.rtol},
        "all_ok": all(r["ok"] for r in rows),
        "checks": rows,
    }
    (out / PARITY_NAME).write_text(json.dumps(data, indent=2) + "\n")
    log(f"parity: {sum(r['ok'] for r in rows)}/{len(rows)} outputs within tolerance → {out / PARITY_NAME}")
