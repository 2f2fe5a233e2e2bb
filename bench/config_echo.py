"""The configuration part of the report: flags, model (dims, layer counts), images, thresholds,
package versions and the machine (CPU, cores, memory in GiB, OS)."""

from __future__ import annotations

import json
import os
import platform
from importlib import metadata
from pathlib import Path

from bench.progress import log
from bench.stats import TritonStats
from bench.target import Target
from bench.workloads import Workloads

VERSION_PACKAGES = (
    "numpy",
    "tritonclient",
    "onnxruntime",
    "openvino",
    "pycocotools",
    "pillow",
    "torch",
    "transformers",
)


def versions(server_version: str) -> dict:
    """Python, installed package versions (None when absent) and the Triton server's version."""
    found = {"python": platform.python_version(), "tritonserver": server_version}
    for name in VERSION_PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def machine() -> dict:
    """CPU model, core counts, memory (GiB) and OS of this machine."""
    info = {
        "cpu_model": _proc_field("/proc/cpuinfo", "model name") or platform.processor() or "unknown",
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
    }
    if hasattr(os, "sched_getaffinity"):
        info["cpus_usable"] = len(os.sched_getaffinity(0))
    mem = _proc_field("/proc/meminfo", "MemTotal")
    info["memory_gib"] = round(int(mem.split()[0]) / 2**20, 1) if mem else None
    return info


def _proc_field(path: str, key: str) -> str | None:
    """Value of the first ``key: value`` line of a /proc file (None when unreadable or absent)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in lines if line.split(":")[0].strip() == key), None)


def echo_config(args, target: Target, stats: TritonStats, work: Workloads) -> dict:
    """The configuration part of the report."""
    flags = {
        k: getattr(args, k)
        for k in (
            "protocols",
            "modes",
            "concurrency",
            "warmup",
            "repeats",
            "compare_repeats",
            "clicks",
            "photo_scale",
            "cache",
            "threshold",
            "keep",
            "points_per_side",
            "pred_iou_thresh",
            "stability_thresh",
            "quick",
        )
    }
    images = {n: {"shape": list(i.shape), "format": i.format, "bytes": len(i.data)} for n, i in work.images.items()}
    return {
        "model": target.model,
        "checkpoint": str(target.checkpoint) if target.checkpoint else None,
        "urls": target.urls,
        "served_precision": target.precision,
        "dims": stats.dims(),
        "local_components": _local_components(stats, target),
        "model_config": _model_summary(target.checkpoint),
        "images": images,
        "thresholds": work.thresholds,
        "clicks": work.clicks,
        "box": work.box,
        "flags": flags,
        "versions": versions(stats.server_version()),
        "machine": machine(),
    }


def _local_components(stats: TritonStats, target: Target) -> list[str]:
    """The components the orchestrator runs in its process. Without a metrics URL P5 has neither their compute
    nor the orchestrator's own time (its ``execute`` returns before it answers), which the log says."""
    local = stats.local_components()
    if not target.metrics_url:
        log(
            "warning: no --metrics-url: P5 reads sam3's time from Triton's statistics, which cover only its "
            "execute's hand-off"
            + (f", and counts the compute of {local} (run in the orchestrator's process) as overhead" if local else "")
        )
    return local


def _model_summary(checkpoint: Path | str | None) -> dict | None:
    """Layer counts and widths read from the checkpoint's config.json (None without a local checkpoint)."""
    if checkpoint is None or not (Path(checkpoint) / "config.json").is_file():
        return None
    cfg = json.loads((Path(checkpoint) / "config.json").read_text())
    det = cfg.get("detector_config", cfg)
    vit = det.get("vision_config", {}).get("backbone_config", {})
    pick = lambda d, *keys: {k: d.get(k) for k in keys}  # noqa: E731
    return {
        "vit": pick(
            vit,
            "image_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "window_size",
            "global_attn_indexes",
        ),
        "text": pick(det.get("text_config", {}), "hidden_size", "num_hidden_layers"),
        "detr_encoder_layers": det.get("detr_encoder_config", {}).get("num_layers"),
        "detr_decoder_layers": det.get("detr_decoder_config", {}).get("num_layers"),
        "geometry_layers": det.get("geometry_encoder_config", {}).get("num_layers"),
        "queries": det.get("detr_decoder_config", {}).get("num_queries"),
        "hidden": det.get("vision_config", {}).get("fpn_hidden_size"),
    }
