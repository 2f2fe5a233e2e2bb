"""A tiny random-weight SAM3 checkpoint laid out like facebook/sam3 (one ViT, two necks).

Built from transformers' own classes with a fixed seed and saved as an ordinary checkpoint
directory (config.json, model.safetensors, tokenizer, processor config), so the rest of the
project treats it exactly like the real model. Sizes (DESIGN.md tiny-config constraints):
224 px input, patch 14 → 16×16 grid, ViT 64 wide × 4 layers (global attention at 1 and 3),
window 8, one hidden size of 32 for neck/DETR/tracker, 20 DETR queries, a 2-layer CLIP text
encoder with the real 49408-token vocab. Written by export/random_checkpoint.py.
"""

from __future__ import annotations

from pathlib import Path

from export.random_checkpoint import write_random_checkpoint

TINY_IMAGE_SIZE = 224
TINY_HIDDEN = 32
TINY_QUERIES = 20
TINY_SEED = 0


def tiny_vision_config(image_size: int = TINY_IMAGE_SIZE, hidden: int = TINY_HIDDEN) -> dict:
    """Vision config dict (ViT + FPN neck) shared by the detector and tracker configs."""
    grid = image_size // 14
    vit = dict(
        model_type="sam3_vit_model",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=14,
        window_size=8,
        global_attn_indexes=[1, 3],
        pretrain_image_size=image_size,
    )
    return dict(
        backbone_config=vit,
        fpn_hidden_size=hidden,
        backbone_feature_sizes=[[4 * grid, 4 * grid], [2 * grid, 2 * grid], [grid, grid]],
    )


def tiny_video_config(image_size: int = TINY_IMAGE_SIZE, hidden: int = TINY_HIDDEN, queries: int = TINY_QUERIES):
    """A Sam3VideoConfig whose detector and tracker are tiny (see module docstring)."""
    from transformers import Sam3Config, Sam3TrackerVideoConfig, Sam3VideoConfig  # noqa: PLC0415 (optional: export extra)

    vision = tiny_vision_config(image_size, hidden)
    small = dict(hidden_size=hidden, num_attention_heads=2, intermediate_size=64)
    detector = Sam3Config(
        vision_config=vision,
        text_config=dict(
            vocab_size=49408,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=32,
            projection_dim=32,
        ),
        geometry_encoder_config=dict(small, num_layers=1, roi_size=7),
        detr_encoder_config=dict(small, num_layers=1),
        detr_decoder_config=dict(small, num_layers=2, num_queries=queries),
        mask_decoder_config=dict(hidden_size=hidden, num_attention_heads=2),
    )
    tracker = Sam3TrackerVideoConfig(
        image_size=image_size,
        vision_config=vision,
        prompt_encoder_config=dict(hidden_size=hidden, image_size=image_size, patch_size=14),
        mask_decoder_config=dict(hidden_size=hidden, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=hidden),
        memory_attention_hidden_size=hidden,
        memory_encoder_hidden_size=hidden,
        mask_downsampler_embed_dim=hidden,
        memory_fuser_embed_dim=hidden,
        memory_fuser_intermediate_dim=64,
        memory_attention_feed_forward_hidden_size=64,
        memory_encoder_output_channels=16,
    )
    return Sam3VideoConfig(detector_config=detector, tracker_config=tracker)


def build_tiny_checkpoint(out_dir: Path, seed: int = TINY_SEED) -> Path:
    """Write the tiny checkpoint (config, safetensors, tokenizer, processor) to out_dir."""
    return write_random_checkpoint(tiny_video_config(), out_dir, TINY_IMAGE_SIZE, seed)
