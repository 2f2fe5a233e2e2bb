"""Our component split, timed in eager PyTorch on the device: what each exported stage costs at batch 1/4/8.

The wrappers export/wrappers.py exports (vision, text, concept, mask, prompt) run on transformers'
SAM3 at real size with random weights, under bf16 autocast, on the inputs export/inputs.py makes
for the spec's sizes (server/gpu_check/plan.py: the lead axis at the batch, the others at their
profile's opt). No engine is involved: this is the eager floor TensorRT should beat, and it shows
how each stage scales with its batch (e.g. whether four concepts in one concept call cost less
than four calls) on the machine the gpu target runs on.
"""

from __future__ import annotations

import torch

from export.checkpoint import dims_from_config
from export.inputs import example_inputs
from sam3_spec import component_specs
from server.gpu_check.plan import stage_sizes
from server.gpu_check.torch_probe import sam3_configs, timed_forward


def sam3_pair(device, small: bool):
    """(Sam3Model, Sam3TrackerModel) with random weights on ``device``: the real size, or the tiny test size."""
    from transformers import Sam3Model, Sam3TrackerModel  # noqa: PLC0415 (export extra)

    detector_config, tracker_config = sam3_configs(small)
    with torch.device(device):
        return Sam3Model(detector_config).eval(), Sam3TrackerModel(tracker_config).eval()


def stage_rows(device, args) -> list[dict]:
    """Per component and batch: ms per call and items/s under bf16 autocast (skipped: outside the profile)."""
    from export.wrappers import build_wrappers  # noqa: PLC0415 (imports transformers)

    detector, tracker = sam3_pair(device, args.small)
    dims = dims_from_config(detector)
    wrappers, rows = build_wrappers(detector, tracker), []
    for name, spec in component_specs(dims).items():
        for batch in args.batches:
            run = stage_sizes(spec, batch)
            if run.sizes is None:
                rows.append({"component": name, "batch": batch, "ms": None, "note": run.note})
                continue
            feeds = {
                k: torch.from_numpy(v).to(device) for k, v in example_inputs(spec, run.sizes, dims.image_size).items()
            }
            ms = timed_forward(wrappers[name], feeds, "bf16", device, args)
            rows.append({"component": name, "batch": batch, "ms": ms, "items_per_s": round(batch * 1e3 / ms, 1)})
    return rows


def format_stages(rows: list[dict]) -> str:
    """The stage table: one line per component, ms at each batch."""
    lines = ["our stages in eager torch, bf16 autocast (ms per call at batch b; items/s):"]
    for name in dict.fromkeys(r["component"] for r in rows):
        cells = [
            f"b{r['batch']} " + (f"{r['ms']} ms ({r['items_per_s']}/s)" if r["ms"] is not None else "skipped")
            for r in rows
            if r["component"] == name
        ]
        lines.append(f"  {name:<8} " + ", ".join(cells))
    return "\n".join(lines)
