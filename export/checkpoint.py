"""Resolve and load a SAM3 checkpoint: an HF id, a local directory, or ``tiny``.

A checkpoint holds ONE ViT and two necks (detector + tracker). Loading it gives a
``Sam3Model`` and a ``Sam3TrackerModel``; both must load with zero missing or unexpected
keys (we never silently random-initialize), and their ViTs must be identical, since the
exported vision graph runs the ViT once for both heads.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from sam3_spec import Dims

DEFAULT_MODEL = "facebook/sam3"
# Built-in random-weight checkpoints: name → (module, builder). Built on first use, then cached.
BUILTIN = {
    "tiny": ("export.tiny", "build_tiny_checkpoint"),
    "bench": ("export.bench_model", "build_bench_checkpoint"),
    "full-random": ("export.full_size", "build_full_random_checkpoint"),
}


class CheckpointError(RuntimeError):
    """The checkpoint cannot be found, is gated, or does not match the SAM3 classes."""


def resolve_checkpoint(model: str, cache_dir: Path) -> Path | str:
    """A built-in name (built on first use in cache_dir/<name>-checkpoint), a local dir, or the HF id."""
    if model in BUILTIN:
        module, builder = BUILTIN[model]
        target = Path(cache_dir) / f"{model}-checkpoint"
        if not (target / "model.safetensors").is_file():
            getattr(importlib.import_module(module), builder)(target)
        return target
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{path} has no config.json: not a SAM3 checkpoint directory")
        return path
    if os.sep in model and not model.count("/") == 1:
        raise CheckpointError(f"checkpoint directory {model} does not exist")
    return model


def load_models(checkpoint: Path | str, token: str | None = None):
    """Load (Sam3Model, Sam3TrackerModel) in eval/fp32 mode, strictly.

    Raises CheckpointError on missing/unexpected keys, gated repos without a token, or
    ViTs that differ between the two models.
    """
    from transformers import Sam3Model, Sam3TrackerModel  # noqa: PLC0415 (optional: export extra)

    detector = _load_strict(Sam3Model, checkpoint, token)
    tracker = _load_strict(Sam3TrackerModel, checkpoint, token)
    _check_shared_vit(detector, tracker)
    return detector, tracker


def _load_strict(cls, checkpoint, token):
    try:
        model, info = cls.from_pretrained(checkpoint, token=token, output_loading_info=True)
    except OSError as err:
        raise CheckpointError(_explain_load_error(checkpoint, err)) from err
    bad = {k: sorted(v) for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if bad:
        listing = "; ".join(f"{k}: {v[:8]}{' ...' if len(v) > 8 else ''}" for k, v in bad.items())
        raise CheckpointError(f"{cls.__name__} does not match checkpoint {checkpoint}: {listing}")
    return model.float().eval()


def _explain_load_error(checkpoint, err: OSError) -> str:
    text = str(err)
    if "gated" in text.lower() or "401" in text or "403" in text:
        return (
            f"{checkpoint} is gated: accept its license on the Hub and set HF_TOKEN "
            f"(or pass --hf-token). Original error: {text}"
        )
    return f"cannot load {checkpoint}: {text}"


def _check_shared_vit(detector, tracker) -> None:
    a = detector.vision_encoder.backbone.state_dict()
    b = tracker.vision_encoder.backbone.state_dict()
    differing = [k for k in a if k not in b or not a[k].equal(b[k])]
    if differing:
        raise CheckpointError(
            f"detector and tracker ViTs differ ({len(differing)} tensors, e.g. {differing[:3]}); "
            "the vision graph runs one ViT for both and cannot export this checkpoint"
        )


def dims_from_config(detector) -> Dims:
    """Dims (image size, patch, hidden, queries, text width) of a loaded Sam3Model."""
    cfg = detector.config
    vit = cfg.vision_config.backbone_config
    return Dims(
        image_size=int(vit.image_size),
        patch=int(vit.patch_size),
        hidden=int(cfg.vision_config.fpn_hidden_size),
        queries=int(cfg.detr_decoder_config.num_queries),
        text_hidden=int(cfg.text_config.hidden_size),
    )


def config_summary(detector, tracker) -> dict:
    """Small, human-readable summary of the architecture for the manifest."""
    cfg = detector.config
    vit = cfg.vision_config.backbone_config
    return {
        "vit_layers": vit.num_hidden_layers,
        "vit_hidden": vit.hidden_size,
        "window": vit.window_size,
        "global_layers": list(vit.global_attn_indexes or []),
        "text_layers": cfg.text_config.num_hidden_layers,
        "detr_encoder_layers": cfg.detr_encoder_config.num_layers,
        "detr_decoder_layers": cfg.detr_decoder_config.num_layers,
        "parameters_detector": sum(p.numel() for p in detector.parameters()),
        "parameters_tracker": sum(p.numel() for p in tracker.parameters()),
    }
