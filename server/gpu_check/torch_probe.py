"""``python -m server.gpu_check.torch_probe``: the GPU checks that need only PyTorch (no TensorRT, no Triton).

What a bare CUDA machine with torch, transformers, OpenCV and pycocotools can prove about the
``gpu`` target before any engine exists:

- post-processing parity: postprocess_torch on the device (the gpu target's path) against the CPU
  path (postprocess.py, OpenCV) on the same random concept-mask logits [K, 288, 288]: the fraction
  of mask pixels that differ (bilinear weights in float32 on both sides; expected ≤ 1e-4);
- post-processing cost per kept mask, logits to COCO RLE, at a photo size (default 1080×1920): the
  device path (sigmoid, upsample, binarize and the RLE run boundaries on the device; pycocotools
  compresses the runs on the host) against the CPU path from the same logits (copy to host,
  OpenCV, pycocotools) and the design the device path replaced (masks copied whole, then RLE);
- what batching buys the vision stage: transformers' SAM3 vision encoder, real size with random
  weights, at batch 1/4/8, fp32 and bf16 autocast, images/s;
- the reference a served text request must beat: transformers' Sam3Model forward for one image and
  one text prompt, fp32 and bf16 autocast, p50 ms;
- with ``--artifacts DIR`` (an export): every mode through the orchestrator's gpu path on device
  tensors against its cpu path (server/gpu_check/torch_pipeline.py);
- with ``--stages``: our five exported stages (export/wrappers.py) in eager torch, bf16 autocast, at
  each batch size (server/gpu_check/torch_stages.py);
- with ``--serving``: our orchestrator end to end on those eager stages, as the gpu target configures
  it (server/gpu_check/torch_serving.py); the tokenizer comes from ``--artifacts`` or open_clip.

Times are CUDA-event medians after warm-up (host clock around a synchronize for host work).
Exit 0 when every parity row passes; 1 when one fails; 2 when it cannot run (no CUDA device and
no ``--device cpu``). ``--device cpu --small`` runs the same code here, small, as the tests do.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ORCHESTRATOR_DIR = Path(__file__).resolve().parents[2] / "triton_repo" / "sam3" / "1"
MASK_SIDE = 288  # SAM3's concept mask logits at 1008 px input
MAX_FLIPPED = 1e-4  # fraction of pixels the device and CPU paths may disagree on
KEPT = (1, 3, 10, 50)
BATCHES = (1, 4, 8)


def orchestrator_modules():
    """(postprocess, postprocess_torch) from triton_repo/sam3/1 (put on sys.path here, not at import)."""
    if str(ORCHESTRATOR_DIR) not in sys.path:
        sys.path.insert(0, str(ORCHESTRATOR_DIR))
    import postprocess  # noqa: PLC0415 (after the sys.path setup)
    import postprocess_torch  # noqa: PLC0415 (after the sys.path setup)

    return postprocess, postprocess_torch


def median_ms(fn, device, warmup: int, iterations: int) -> float:
    """Median wall time of ``fn()`` in ms, synchronizing ``device`` around each call."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iterations):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return round(statistics.median(times), 3)


def random_logits(kept: int, side: int, device, seed: int):
    """float32 [1, K, side, side] smooth-ish mask logits (blobs, not noise) on ``device``."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn((1, kept, side // 8, side // 8), generator=g) * 4
    return F.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False).to(device)


def postprocess_parity(kept: int, image_hw, device, seed: int) -> dict:
    """Device vs CPU concept masks for one K: pixels that differ, and whether that is within MAX_FLIPPED."""
    post, post_torch = orchestrator_modules()
    logits = random_logits(kept, MASK_SIDE, device, seed)
    ours = post_torch.concept_masks(logits, [kept], image_hw, 0.5)[0].columns
    ref = post.concept_masks(logits.cpu().numpy(), [kept], image_hw, 0.5)[0].columns
    flipped = float(np.count_nonzero(ours != ref)) / ref.size
    return {"kept": kept, "flipped": flipped, "ok": flipped <= MAX_FLIPPED and ours.shape == ref.shape}


def postprocess_cost(kept: int, image_hw, device, args) -> dict:
    """ms per kept mask to COCO RLE: the device path (upsample, binarize, run boundaries on the device,
    compression on the host) and the CPU path from the same logits (copy to host, OpenCV, pycocotools)."""
    post, post_torch = orchestrator_modules()
    logits = random_logits(kept, MASK_SIDE, device, args.seed)
    timing = (device, args.warmup, args.iterations)
    device_ms = median_ms(lambda: post_torch.concept_masks(logits, [kept], image_hw, 0.5)[0].rle(), *timing)
    cpu_ms = median_ms(lambda: post.concept_masks(logits.cpu().numpy(), [kept], image_hw, 0.5)[0].rle(), *timing)
    dense_ms = median_ms(lambda: dense_copy_rle(logits[0], image_hw), *timing)
    return {
        "kept": kept,
        "device_ms_per_mask": round(device_ms / kept, 3),
        "dense_copy_ms_per_mask": round(dense_ms / kept, 3),
        "cpu_ms_per_mask": round(cpu_ms / kept, 3),
        "speedup": round(cpu_ms / device_ms, 2),
    }


def dense_copy_rle(logits, image_hw) -> list[bytes]:
    """The alternative the device path replaced: masks binarized on the device, copied to the host
    whole (K·H·W bytes), RLE-encoded there by pycocotools."""
    post, _ = orchestrator_modules()
    h, w = image_hw
    up = F.interpolate(logits.sigmoid().transpose(-1, -2)[:, None], size=(w, h), mode="bilinear", align_corners=False)
    return post.MaskSet((up[:, 0] > 0.5).cpu().numpy(), image_hw).rle()


def sam3_model(device, small: bool):
    """transformers' Sam3Model with random weights: the real configuration, or a small one (tests)."""
    from transformers import Sam3Model  # noqa: PLC0415 (optional: export extra)

    config = sam3_configs(small)[0]
    with torch.device(device):
        model = Sam3Model(config)
    return model.eval(), config


def sam3_configs(small: bool):
    """(Sam3Config, Sam3TrackerConfig): transformers' defaults (the real size), or the tiny test checkpoint's."""
    if small:
        from export.tiny import tiny_video_config  # noqa: PLC0415 (export extra; the small CPU run only)

        video = tiny_video_config()
        return video.detector_config, video.tracker_config
    from transformers import Sam3Config, Sam3TrackerConfig  # noqa: PLC0415 (optional: export extra)

    return Sam3Config(), Sam3TrackerConfig(image_size=1008)


def autocast(device, bf16: bool):
    """bf16 autocast on ``device`` when ``bf16``, else a no-op context."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def vision_rows(model, config, device, args) -> list[dict]:
    """The vision encoder at each batch size, fp32 and bf16 autocast: ms per call and images/s."""
    side, rows = config.vision_config.image_size, []
    for dtype in ("fp32", "bf16"):
        for batch in args.batches:
            pixels = torch.randn((batch, 3, side, side), device=device)
            ms = timed_forward(model.get_vision_features, {"pixel_values": pixels}, dtype, device, args)
            rows.append({"dtype": dtype, "batch": batch, "ms": ms, "images_per_s": round(batch * 1e3 / ms, 1)})
    return rows


def request_rows(model, config, device, args) -> list[dict]:
    """One image + one text prompt through Sam3Model.forward, fp32 and bf16 autocast: p50 ms."""
    side = config.vision_config.image_size
    ids = torch.full((1, 32), 49407, dtype=torch.long, device=device)
    ids[0, :3] = torch.tensor([49406, 2533, 49407])  # <bos> "person" <eos>, then padding
    inputs = {
        "pixel_values": torch.randn((1, 3, side, side), device=device),
        "input_ids": ids,
        "attention_mask": (torch.arange(32, device=device) < 3).long()[None],
    }
    return [{"dtype": d, "p50_ms": timed_forward(model, inputs, d, device, args)} for d in ("fp32", "bf16")]


def timed_forward(fn, inputs: dict, dtype: str, device, args) -> float:
    """Median ms of ``fn(**inputs)`` under inference mode, in fp32 or bf16 autocast."""
    with torch.inference_mode(), autocast(device, dtype == "bf16"):
        return median_ms(lambda: fn(**inputs), device, args.warmup, args.iterations)


def environment(device) -> dict:
    """Versions and the device's name."""
    import transformers  # noqa: PLC0415 (optional: export extra)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"device": name, "torch": torch.__version__, "transformers": transformers.__version__}


def run_probe(args) -> dict:
    """Every measurement of the probe, as one report dict."""
    device, hw = torch.device(args.device), args.image_hw
    report = {"environment": environment(device), "image_hw": list(hw)}
    log(f"probe on {report['environment']}")
    report["parity"] = [postprocess_parity(k, hw, device, args.seed + k) for k in args.kept]
    report["postprocess"] = [postprocess_cost(k, hw, device, args) for k in args.kept]
    report["ok"] = all(r["ok"] for r in report["parity"])
    log(format_postprocess(report))
    if args.artifacts:
        from server.gpu_check.torch_pipeline import pipeline_rows  # noqa: PLC0415 (needs onnxruntime, tokenizers)

        report["pipeline"] = pipeline_rows(args.artifacts, device)
        report["ok"] = report["ok"] and all(r["ok"] for r in report["pipeline"])
        log(format_pipeline(report["pipeline"]))
    if args.postprocess_only:
        return report
    log("building transformers' Sam3Model (random weights)")
    model, config = sam3_model(device, args.small)
    report["vision"] = vision_rows(model, config, device, args)
    report["request"] = request_rows(model, config, device, args)
    if args.serving:
        from server.gpu_check.torch_serving import format_serving, serving_rows  # noqa: PLC0415 (export extra)

        report["serving"] = serving_rows(device, args, tokenizer_json(args))
        log(format_serving(report["serving"]))
    if args.stages:
        from server.gpu_check.torch_stages import format_stages, stage_rows  # noqa: PLC0415 (export extra)

        del model
        report["stages"] = stage_rows(device, args)
        log(format_stages(report["stages"]))
    return report


def tokenizer_json(args) -> Path:
    """The export's tokenizer.json (``--artifacts``), else one built from open_clip's CLIP vocabulary."""
    if args.artifacts:
        return args.artifacts / "tokenizer.json"
    import tempfile  # noqa: PLC0415 (only without --artifacts)

    from export.tokenizer import build_tokenizer_json  # noqa: PLC0415 (export extra: open_clip's vocabulary)

    return build_tokenizer_json(Path(tempfile.mkdtemp(prefix="sam3-probe-")) / "tokenizer.json")


def format_postprocess(report: dict) -> str:
    """The post-processing table: parity and ms per kept mask, per K."""
    lines = [f"environment: {report['environment']}  image {report['image_hw']}"]
    lines.append("post-processing to COCO RLE, ms per kept mask:")
    lines.append("  K   flipped    device   dense-copy  cpu-path   device vs cpu")
    for par, cost in zip(report["parity"], report["postprocess"]):
        lines.append(
            f"  {par['kept']:<3} {par['flipped']:<9.2e} {cost['device_ms_per_mask']:<8} "
            f"{cost['dense_copy_ms_per_mask']:<11} {cost['cpu_ms_per_mask']:<10} {cost['speedup']}x"
        )
    return "\n".join(lines)


def format_pipeline(rows: list[dict]) -> str:
    """The pipeline table: per mode, gpu path vs cpu path and the gpu path's ms."""
    lines = ["orchestrator, gpu path (device tensors, postprocess_torch) vs cpu path, per mode:"]
    for r in rows:
        diffs = {k: r[k] for k in ("score_diff", "box_diff", "mask_flipped") if k in r}
        lines.append(
            f"  {r['mode']:<6} {'ok' if r['ok'] else 'DIFFERS'} detections {r['detections']} {diffs} {r['ms']} ms"
        )
    return "\n".join(lines)


def format_report(report: dict) -> str:
    """The printed tables."""
    lines = [format_postprocess(report)] + ([format_pipeline(report["pipeline"])] if "pipeline" in report else [])
    if "vision" not in report:
        return "\n".join([*lines, "parity " + ("ok" if report["ok"] else "FAILED")])
    lines.append("vision encoder (transformers, random weights):")
    lines += [f"  {r['dtype']} batch {r['batch']}: {r['ms']} ms, {r['images_per_s']} img/s" for r in report["vision"]]
    lines += [f"text request forward (transformers) {r['dtype']}: p50 {r['p50_ms']} ms" for r in report["request"]]
    if "stages" in report:
        from server.gpu_check.torch_stages import format_stages  # noqa: PLC0415 (imports transformers)

        lines.append(format_stages(report["stages"]))
    if "serving" in report:
        from server.gpu_check.torch_serving import format_serving  # noqa: PLC0415 (imports transformers)

        lines.append(format_serving(report["serving"]))
    lines.append("parity " + ("ok" if report["ok"] else "FAILED (see the rows above)"))
    return "\n".join(lines)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m server.gpu_check.torch_probe", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (with --small: the tests' run)")
    p.add_argument("--small", action="store_true", help="the tiny test config instead of the real SAM3 size")
    p.add_argument("--image-hw", type=lambda s: tuple(int(v) for v in s.split(",")), default=(1080, 1920))
    p.add_argument("--kept", type=lambda s: tuple(int(v) for v in s.split(",")), default=KEPT)
    p.add_argument("--batches", type=lambda s: tuple(int(v) for v in s.split(",")), default=BATCHES)
    p.add_argument("--postprocess-only", action="store_true", help="skip transformers' model (vision, request)")
    p.add_argument("--stages", action="store_true", help="also time our five exported stages in eager torch")
    p.add_argument("--serving", action="store_true", help="also time our orchestrator end to end on eager-torch stages")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--artifacts", type=Path, help="an export (e.g. the tiny model's): also run every mode's gpu path")
    p.add_argument("--json", type=Path, help="also write the report here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.serving and not args.artifacts and importlib.util.find_spec("open_clip") is None:
        log("error: --serving needs a tokenizer: --artifacts DIR (an export) or open_clip_torch installed")
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        log("error: no CUDA device visible to torch; run on an NVIDIA GPU or pass --device cpu --small")
        return 2
    report = run_probe(args)
    print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
