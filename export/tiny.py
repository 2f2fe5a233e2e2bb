"""A tiny random-weight SAM3 checkpoint laid out like facebook/sam3 (one ViT, two necks).

Built from transformers' own classes with a fixed seed and saved as an ordinary checkpoint
directory (config.json, model.safetensors, tokenizer, processor config), so the rest of the
project treats it exactly like the real model. Sizes (DESIGN.md tiny-config constraints):
224 px input, patch 14 → 16×16 grid, ViT 64 wide × 4 layers (global attention at 1 and 3),
window 8, one hidden size of 32 for neck/DETR/tracker, 20 DETR queries, a 2-layer CLIP text
encoder with the real 49408-token vocab.

We write the state dict ourselves: ``Sam3VideoModel.save_pretrained`` in transformers 5.23
writes tracker keys as ``tracker_model.tracker_model.*``, which Sam3TrackerModel cannot load.
"""

from __future__ import annotations

from pathlib import Path

TINY_IMAGE_SIZE = 224
TINY_HIDDEN = 32
TINY_QUERIES = 20
TINY_SEED = 0


def tiny_vision_config(image_size: int = TINY_IMAGE_SIZE, hidden: int = TINY_HIDDEN) -> dict:
    """Vision config dict (ViT + FPN neck) shared by the detector and tracker configs."""
    grid = image_size // 14
    vit = dict(model_type="sam3_vit_model", hidden_size=64, intermediate_size=128, num_hidden_layers=4,
               num_attention_heads=4, image_size=image_size, patch_size=14, window_size=8,
               global_attn_indexes=[1, 3], pretrain_image_size=image_size)
    return dict(backbone_config=vit, fpn_hidden_size=hidden,
                backbone_feature_sizes=[[4 * grid, 4 * grid], [2 * grid, 2 * grid], [grid, grid]])


def tiny_video_config(image_size: int = TINY_IMAGE_SIZE, hidden: int = TINY_HIDDEN, queries: int = TINY_QUERIES):
    """A Sam3VideoConfig whose detector and tracker are tiny (see module docstring)."""
    from transformers import Sam3Config, Sam3TrackerVideoConfig, Sam3VideoConfig
    vision = tiny_vision_config(image_size, hidden)
    small = dict(hidden_size=hidden, num_attention_heads=2, intermediate_size=64)
    detector = Sam3Config(
        vision_config=vision,
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=32, projection_dim=32),
        geometry_encoder_config=dict(small, num_layers=1, roi_size=7),
        detr_encoder_config=dict(small, num_layers=1),
        detr_decoder_config=dict(small, num_layers=2, num_queries=queries),
        mask_decoder_config=dict(hidden_size=hidden, num_attention_heads=2))
    tracker = Sam3TrackerVideoConfig(
        image_size=image_size, vision_config=vision,
        prompt_encoder_config=dict(hidden_size=hidden, image_size=image_size, patch_size=14),
        mask_decoder_config=dict(hidden_size=hidden, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=hidden),
        memory_attention_hidden_size=hidden, memory_encoder_hidden_size=hidden, mask_downsampler_embed_dim=hidden,
        memory_fuser_embed_dim=hidden, memory_fuser_intermediate_dim=64,
        memory_attention_feed_forward_hidden_size=64, memory_encoder_output_channels=16)
    return Sam3VideoConfig(detector_config=detector, tracker_config=tracker)


def build_tiny_checkpoint(out_dir: Path, seed: int = TINY_SEED) -> Path:
    """Write the tiny checkpoint (config, safetensors, tokenizer, processor) to out_dir."""
    import torch
    from safetensors.torch import save_file
    from transformers import Sam3VideoModel

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = tiny_video_config()
    torch.manual_seed(seed)
    model = Sam3VideoModel(config).eval()
    _perturb_presence(model, seed)
    config.save_pretrained(out_dir)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    save_processors(out_dir, TINY_IMAGE_SIZE)
    return out_dir


def _perturb_presence(model, seed: int) -> None:
    """Give randomly-initialized weights a spread so detections differ per query.

    transformers initializes several heads (biases, presence, box heads) to zeros; with
    all-zero heads every query scores the same and parity checks could not fail. We
    re-draw every parameter from N(0, 0.2²) with a fixed generator — still random weights.
    """
    import torch
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 1 and "norm" not in name.lower():
                p.copy_(torch.randn(p.shape, generator=gen) * (0.2 if p.dim() == 1 else _std(p)))


def _std(p) -> float:
    fan_in = max(1, p[0].numel())
    return 1.0 / fan_in ** 0.5


def save_processors(out_dir: Path, image_size: int) -> None:
    """Save a CLIP tokenizer (open_clip vocab) and SAM3 processor configs for image_size."""
    from transformers import AutoTokenizer, Sam3ImageProcessor, Sam3Processor
    from export.tokenizer import build_clip_tokenizer
    tokenizer = AutoTokenizer.from_pretrained(build_clip_tokenizer(out_dir))
    size = {"height": image_size, "width": image_size}
    mask = {"height": 4 * image_size // 14, "width": 4 * image_size // 14}
    image_processor = Sam3ImageProcessor(size=size, mask_size=mask)
    Sam3Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out_dir)
