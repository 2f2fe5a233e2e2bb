"""``full-random``: the real SAM3 architecture (transformers' default configs) with random weights.

For timing and export checks at real size where facebook/sam3 cannot be downloaded. Same
layout as the real checkpoint (one ViT, two necks), written like export/tiny.py. About 3.4 GB.
"""

from __future__ import annotations

from pathlib import Path


def build_full_random_checkpoint(out_dir: Path, seed: int = 0) -> Path:
    import torch
    from safetensors.torch import save_file
    from transformers import Sam3Config, Sam3TrackerVideoConfig, Sam3VideoConfig, Sam3VideoModel

    from export.tiny import save_processors
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = Sam3VideoConfig(detector_config=Sam3Config(), tracker_config=Sam3TrackerVideoConfig(image_size=1008))
    torch.manual_seed(seed)
    model = Sam3VideoModel(config).eval()
    config.save_pretrained(out_dir)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(out_dir / "model.safetensors"),
              metadata={"format": "pt"})
    save_processors(out_dir, 1008)
    return out_dir
