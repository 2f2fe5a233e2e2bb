"""A random-weight SAM3 checkpoint for benchmarks: the real structure, reduced in size.

Laid out like facebook/sam3 (one ViT, a detector neck and a tracker neck) and built the same
way as the tiny model (export/tiny.py): transformers' own classes, a fixed seed, the state
dict written with safetensors ourselves. Big enough that the stages weigh against each other
roughly as in the real model (ViT ≫ DETR > text > prompt head), small enough that a full
benchmark runs in minutes on 2 CPU cores.

==========================  ======================  =====================
part                        bench                   facebook/sam3
==========================  ======================  =====================
input / patch / grid        504 px / 14 / 36×36     1008 px / 14 / 72×72
ViT                         384 wide × 8 layers,    1024 × 32, 16 heads,
                            6 heads, window 12,     window 24,
                            global at 1, 3, 5, 7    global at 7, 15, 23, 31
neck / DETR / tracker       128 wide, 8 heads       256 wide, 8 heads
DETR encoder / decoder      3 / 3 layers            6 / 6 layers
geometry encoder            2 layers                3 layers
queries                     100                     200
CLIP text                   256 wide × 4 layers     1024 × 24 layers
masks                       144×144                 288×288
==========================  ======================  =====================

DESIGN.md constraints hold: ViT head_dim 64 (% 4 == 0), grid 36 a multiple of window 12, one
hidden size (128, divisible by 8), FPN sizes [[4g,4g],[2g,2g],[g,g]], text positions 32.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from export.random_checkpoint import write_random_checkpoint

BENCH_SEED = 0


@dataclass(frozen=True)
class BenchSizes:
    """Every width/depth knob of the bench model (defaults: the table in the module docstring)."""

    image_size: int = 504
    vit_hidden: int = 384
    vit_layers: int = 8
    vit_heads: int = 6
    vit_window: int = 12
    vit_global: tuple = (1, 3, 5, 7)
    hidden: int = 128
    heads: int = 8
    ffn: int = 1024
    detr_encoder_layers: int = 3
    detr_decoder_layers: int = 3
    geometry_layers: int = 2
    queries: int = 100
    text_hidden: int = 256
    text_layers: int = 4
    text_heads: int = 4

    @property
    def grid(self) -> int:
        return self.image_size // 14

    def check(self) -> None:
        """Raise ValueError when a DESIGN.md tiny-config constraint is broken."""
        problems = []
        if (self.vit_hidden // self.vit_heads) % 4:
            problems.append(f"ViT head_dim {self.vit_hidden // self.vit_heads} must be a multiple of 4")
        if self.image_size % 14 or self.grid % self.vit_window:
            problems.append(f"grid {self.image_size}/14 must be an integer multiple of window {self.vit_window}")
        if self.hidden % 8 or self.hidden % self.heads:
            problems.append(f"hidden {self.hidden} must be divisible by 8 and by heads {self.heads}")
        if problems:
            raise ValueError("bench model sizes: " + "; ".join(problems))


def bench_vision_config(s: BenchSizes) -> dict:
    """Vision config dict (ViT + FPN neck) shared by the detector and tracker configs."""
    g = s.grid
    vit = dict(
        model_type="sam3_vit_model",
        hidden_size=s.vit_hidden,
        intermediate_size=4 * s.vit_hidden,
        num_hidden_layers=s.vit_layers,
        num_attention_heads=s.vit_heads,
        image_size=s.image_size,
        patch_size=14,
        window_size=s.vit_window,
        global_attn_indexes=list(s.vit_global),
        pretrain_image_size=s.image_size,
    )
    return dict(
        backbone_config=vit, fpn_hidden_size=s.hidden, backbone_feature_sizes=[[4 * g, 4 * g], [2 * g, 2 * g], [g, g]]
    )


def bench_detector_config(s: BenchSizes):
    """Sam3Config of the detector (text encoder, geometry encoder, DETR, mask decoder)."""
    from transformers import Sam3Config  # noqa: PLC0415 (optional: export extra)

    layer = dict(hidden_size=s.hidden, num_attention_heads=s.heads, intermediate_size=s.ffn)
    return Sam3Config(
        vision_config=bench_vision_config(s),
        text_config=dict(
            vocab_size=49408,
            hidden_size=s.text_hidden,
            intermediate_size=4 * s.text_hidden,
            num_hidden_layers=s.text_layers,
            num_attention_heads=s.text_heads,
            max_position_embeddings=32,
            projection_dim=s.hidden,
        ),
        geometry_encoder_config=dict(layer, num_layers=s.geometry_layers, roi_size=7),
        detr_encoder_config=dict(layer, num_layers=s.detr_encoder_layers),
        detr_decoder_config=dict(layer, num_layers=s.detr_decoder_layers, num_queries=s.queries),
        mask_decoder_config=dict(hidden_size=s.hidden, num_attention_heads=s.heads),
    )


def bench_tracker_config(s: BenchSizes):
    """Sam3TrackerVideoConfig (prompt encoder + mask decoder; memory parts sized to match)."""
    from transformers import Sam3TrackerVideoConfig  # noqa: PLC0415 (optional: export extra)

    h = s.hidden
    return Sam3TrackerVideoConfig(
        image_size=s.image_size,
        vision_config=bench_vision_config(s),
        prompt_encoder_config=dict(hidden_size=h, image_size=s.image_size, patch_size=14),
        mask_decoder_config=dict(hidden_size=h, mlp_dim=s.ffn, num_attention_heads=s.heads, iou_head_hidden_dim=h),
        memory_attention_hidden_size=h,
        memory_encoder_hidden_size=h,
        mask_downsampler_embed_dim=h,
        memory_fuser_embed_dim=h,
        memory_fuser_intermediate_dim=4 * h,
        memory_attention_feed_forward_hidden_size=s.ffn,
        memory_encoder_output_channels=32,
        memory_attention_rope_feat_sizes=[s.grid, s.grid],
    )


def bench_video_config(sizes: BenchSizes = BenchSizes()):
    """A Sam3VideoConfig whose detector and tracker have the bench sizes."""
    from transformers import Sam3VideoConfig  # noqa: PLC0415 (optional: export extra)

    sizes.check()
    return Sam3VideoConfig(detector_config=bench_detector_config(sizes), tracker_config=bench_tracker_config(sizes))


def build_bench_checkpoint(out_dir: Path, seed: int = BENCH_SEED, sizes: BenchSizes = BenchSizes()) -> Path:
    """Write the bench checkpoint (config, model.safetensors, tokenizer, processor) to out_dir; return it."""
    return write_random_checkpoint(bench_video_config(sizes), out_dir, sizes.image_size, seed)


def bench_sizes_summary(sizes: BenchSizes = BenchSizes()) -> dict:
    """The knobs as a JSON-ready dict (echoed by the benchmark report)."""
    return {**asdict(sizes), "vit_global": list(sizes.vit_global), "grid": sizes.grid}
