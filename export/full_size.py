"""``full-random``: the real SAM3 architecture (transformers' default configs) with random weights.

For timing and export checks at real size where facebook/sam3 cannot be downloaded. Same
layout as the real checkpoint (one ViT, two necks), written like export/tiny.py. About 3.4 GB.
"""

from __future__ import annotations

from pathlib import Path

from export.random_checkpoint import write_random_checkpoint


def build_full_random_checkpoint(out_dir: Path, seed: int = 0) -> Path:
    """transformers' default SAM3 configs (1008 px, 32-layer ViT, ...) with random weights."""
    from transformers import Sam3Config, Sam3TrackerVideoConfig, Sam3VideoConfig  # noqa: PLC0415 (optional: export extra)

    config = Sam3VideoConfig(detector_config=Sam3Config(), tracker_config=Sam3TrackerVideoConfig(image_size=1008))
    return write_random_checkpoint(config, out_dir, 1008, seed, spread=False)
