"""Our orchestrator end to end on the device, its components in eager torch: the gpu target's design
measured before any engine exists.

``Sam3Pipeline`` (triton_repo/sam3/1/pipeline.py) runs as the gpu target configures it (postprocess_torch,
merged text calls, a request's concepts in one call) on ``TorchStages``: the five wrappers of
export/wrappers.py on transformers' SAM3 (real size, random weights), eager under bf16 autocast on the
device, in place of TensorRT engines behind BLS. Timed, per workload, end to end from encoded image bytes
to RLE masks: cold text with one and four concepts, four separate cold text requests (P3), cold and
embedded points, and eight cold point requests in one batch against eight one after another (what
batching the vision stage buys). Not measured: Triton, BLS and the engines themselves.
"""

from __future__ import annotations

import asyncio
import itertools

import torch

from export.checkpoint import dims_from_config
from sam3_spec import component_specs
from server.gpu_check.torch_pipeline import SyncStages, coffee_jpeg, make_request, pipeline_modules
from server.gpu_check.torch_probe import median_ms
from server.gpu_check.torch_stages import sam3_pair

CONCEPTS = ("cup", "saucer", "spoon", "table")
POINT = {"mode": [b"point"], "points": [[300.0, 200.0]], "point_labels": [1]}
_IDS = itertools.count()


class TorchStages(SyncStages):
    """The exported components as eager torch modules on ``device`` (bf16 autocast), with the stages
    interface the pipeline calls (``run``/``arun``/``in_process``); float outputs come back as float32."""

    def __init__(self, wrappers: dict, specs: dict, device):
        self.wrappers, self.specs, self.device = wrappers, specs, device

    def run(self, component: str, feeds: dict, outputs: list | None = None) -> dict:
        tensors = {k: torch.as_tensor(v).to(self.device) for k, v in feeds.items()}
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16):
            values = self.wrappers[component](**tensors)
        names = [t.name for t in self.specs[component].outputs]
        values = (values,) if isinstance(values, torch.Tensor) else values  # a one-output wrapper
        result = {n: v.float() if v.is_floating_point() else v for n, v in zip(names, values)}
        return {n: result[n] for n in outputs or names}


def torch_pipeline(device, small: bool, tokenizer_json):
    """Sam3Pipeline as the gpu target builds it, on TorchStages of a random-weight SAM3."""
    from export.wrappers import build_wrappers  # noqa: PLC0415 (imports transformers)

    modules = pipeline_modules()
    detector, tracker = sam3_pair(device, small)
    dims = dims_from_config(detector)
    stages = TorchStages(build_wrappers(detector, tracker), component_specs(dims), device)
    tokenizer = modules["text_tokens"].TextTokenizer.from_file(tokenizer_json)
    lru = modules["cache"].ByteLRU
    options = {"post": modules["post_torch"], "max_concepts_per_call": len(CONCEPTS)}
    return modules["pipeline"].Sam3Pipeline(stages, tokenizer, dims, lru(2**32), lru(2**26), **options)


def serving_rows(device, args, tokenizer_json) -> list[dict]:
    """Median ms of each workload (and requests/s of the batched ones) through the pipeline on ``device``."""
    pipe, image = torch_pipeline(device, args.small, tokenizer_json), coffee_jpeg()
    workloads = {  # name: (one run, the requests it makes when its requests/s is reported)
        "text, 1 concept, cold": (lambda: _text(pipe, image, CONCEPTS[:1]), None),
        "text, 4 concepts, cold": (lambda: _text(pipe, image, CONCEPTS), None),
        "text, 4 separate cold requests": (lambda: [_text(pipe, image, [c]) for c in CONCEPTS], None),
        "point, cold": (lambda: pipe.run(make_request(image, {**POINT, "image_id": [_fresh()]})), None),
        "point, embedded": (lambda: pipe.run(make_request(image, {**POINT, "image_id": ["embedded"]})), None),
        "8 cold points, one batch": (lambda: _batch(pipe, image, 8), 8),
        "8 cold points, one after another": (lambda: [_batch(pipe, image, 1) for _ in range(8)], 8),
    }
    rows = []
    for name, (fn, requests) in workloads.items():
        ms = median_ms(fn, device, args.warmup, args.iterations)
        rows.append(
            {"workload": name, "ms": ms, **({"requests_per_s": round(requests * 1e3 / ms, 1)} if requests else {})}
        )
    return rows


def format_serving(rows: list[dict]) -> str:
    lines = ["our orchestrator end to end, components in eager torch bf16 (encoded image → RLE):"]
    for r in rows:
        rate = f", {r['requests_per_s']} req/s" if "requests_per_s" in r else ""
        lines.append(f"  {r['workload']:<34} {r['ms']} ms{rate}")
    return "\n".join(lines)


def _text(pipe, image: bytes, concepts):
    fields = {"mode": [b"text"], "text": list(concepts), "threshold": [0.5], "image_id": [_fresh()]}
    return pipe.run(make_request(image, fields))


def _batch(pipe, image: bytes, n: int) -> None:
    """``n`` cold point requests handed to the pipeline together, as one Triton execute would; every one must succeed."""
    reqs = [make_request(image, {**POINT, "image_id": [_fresh()]}) for _ in range(n)]
    for result, _ in asyncio.run(pipe.run_batch(reqs)):
        if isinstance(result, BaseException):
            raise result


def _fresh() -> str:
    return f"probe-{next(_IDS)}"
