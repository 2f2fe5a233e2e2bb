"""Random-weight SAM3 checkpoints written like facebook/sam3: one ViT, two necks, one directory.

``write_random_checkpoint`` builds a ``Sam3VideoModel`` from a ``Sam3VideoConfig`` with a fixed
seed and writes its config, its state dict (safetensors) and a Sam3Processor (CLIP tokenizer +
image processor). The state dict is written directly: ``Sam3VideoModel.save_pretrained`` in
transformers 5.23 writes tracker keys as ``tracker_model.tracker_model.*``, which
Sam3TrackerModel cannot load. Used by export/tiny.py, export/bench_model.py, export/full_size.py.
"""

from __future__ import annotations

from pathlib import Path

from export.tokenizer import save_sam3_processor


def write_random_checkpoint(config, out_dir: Path, image_size: int, seed: int, spread: bool = True) -> Path:
    """Build Sam3VideoModel(config) with ``seed`` (spread_weights if ``spread``), save it to out_dir."""
    import torch  # noqa: PLC0415 (optional: export extra)
    from safetensors.torch import save_file  # noqa: PLC0415 (optional: export extra)
    from transformers import Sam3VideoModel  # noqa: PLC0415 (optional: export extra)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = Sam3VideoModel(config).eval()
    if spread:
        spread_weights(model, seed)
    config.save_pretrained(out_dir)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    save_sam3_processor(out_dir, image_size)
    return out_dir


def spread_weights(model, seed: int) -> None:
    """Give randomly-initialized weights a spread so detections differ per query.

    transformers initializes several heads (biases, presence, box heads) to zeros; with
    all-zero heads every query scores the same and parity checks could not fail. We
    re-draw every non-norm parameter with a fixed generator — vectors from N(0, 0.2²),
    matrices from N(0, 1/fan_in) — still random weights.
    """
    import torch  # noqa: PLC0415 (optional: export extra)

    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 1 and "norm" not in name.lower():
                p.copy_(torch.randn(p.shape, generator=gen) * (0.2 if p.dim() == 1 else _std(p)))


def _std(p) -> float:
    fan_in = max(1, p[0].numel())
    return 1.0 / fan_in**0.5
