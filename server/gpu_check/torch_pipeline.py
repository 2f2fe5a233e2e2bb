"""The gpu target's orchestrator code on device tensors, without Triton or TensorRT.

Every mode runs through ``Sam3Pipeline`` twice on the same exported graphs (ONNX Runtime, CPU):
once as the cpu target runs it (numpy outputs, postprocess.py), once as the gpu target does
(component outputs handed over as torch tensors on ``device``, as BLS hands them over by DLPack
on the GPU; postprocess_torch; merged text calls; several concepts per call). The two results
must agree: same detections, scores within 1e-6, boxes within 1e-3 px, < 1e-4 of mask pixels
different. On a CUDA device this finds what only device tensors break (a tensor where numpy was
expected, a host copy on the wrong side); tests run it on CPU tensors.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from export.manifest import load_manifest
from server.gpu_check.torch_probe import median_ms, orchestrator_modules

# One request per mode on the coffee photo (400×600); auto with a small grid and no filters.
MODES = {
    "text": {"mode": [b"text"], "text": ["cup", "table"], "threshold": [0.2]},
    "point": {"mode": [b"point"], "points": [[120.0, 200.0], [300.0, 100.0]], "point_labels": [1, 0]},
    "box": {"mode": [b"box"], "boxes": [[50.0, 40.0, 300.0, 350.0], [10.0, 10.0, 100.0, 200.0]]},
    "auto": {"mode": [b"auto"], "points_per_side": [8], "pred_iou_thresh": [0.0], "stability_score_thresh": [0.0]},
}
GPU_CONCEPTS_PER_CALL = 4


class SyncStages:
    """The stages interface the pipeline calls, for stages that compute synchronously in this process:
    subclasses define ``run(component, feeds, outputs=None) -> {name: array}``."""

    async def arun(self, component, feeds, outputs=None):
        return self.run(component, feeds, outputs)

    def in_process(self, component):
        return True


class DeviceOutputs(SyncStages):
    """Stages whose outputs are torch tensors on ``device`` (as BLS hands them over on the GPU);
    tensor inputs are brought back to numpy for the wrapped ONNX Runtime sessions."""

    def __init__(self, inner, device):
        self.inner, self.device = inner, device

    def run(self, component, feeds, outputs=None):
        import torch  # noqa: PLC0415 (optional: export extra)

        feeds = {k: v.cpu().numpy() if isinstance(v, torch.Tensor) else v for k, v in feeds.items()}
        return {k: torch.from_numpy(v).to(self.device) for k, v in self.inner.run(component, feeds, outputs).items()}


def make_pipeline(artifacts: Path, device=None):
    """Sam3Pipeline on the exported graphs: the cpu target's (device None) or the gpu target's."""
    modules = pipeline_modules()
    manifest = load_manifest(artifacts)
    stages = modules["stages"].OrtStages({n: artifacts / s.onnx_file for n, s in manifest.specs().items()})
    tokenizer = modules["text_tokens"].TextTokenizer.from_file(artifacts / "tokenizer.json")
    lru = modules["cache"].ByteLRU
    caches = (lru(2**28), lru(2**24))
    if device is None:
        cpu = {"max_concepts_per_call": 1, "merge_text_calls": False}
        return modules["pipeline"].Sam3Pipeline(stages, tokenizer, manifest.dims, *caches, **cpu)
    gpu = {"post": modules["post_torch"], "max_concepts_per_call": GPU_CONCEPTS_PER_CALL}
    return modules["pipeline"].Sam3Pipeline(DeviceOutputs(stages, device), tokenizer, manifest.dims, *caches, **gpu)


def make_request(image: bytes, fields: dict):
    """A Sam3Request from request fields (Triton's tensor names) and encoded image bytes."""
    tensors = {"image": np.array([image], dtype=object)}
    for name, value in fields.items():
        strings = isinstance(value[0], (str, bytes))
        tensors[name] = np.array([v.encode() if isinstance(v, str) else v for v in value], object if strings else None)
    return pipeline_modules()["request"].parse_request(tensors)


def compare(a, b) -> dict:
    """How far result ``b`` (gpu path) is from ``a`` (cpu path); ``ok`` within the module's tolerances."""
    same = len(a.scores) == len(b.scores) and a.masks.dense().shape == b.masks.dense().shape
    if not same:
        return {"detections": [len(a.scores), len(b.scores)], "ok": False}
    row = {
        "detections": len(a.scores),
        "score_diff": float(np.max(np.abs(a.scores - b.scores), initial=0)),
        "box_diff": float(np.max(np.abs(a.boxes - b.boxes), initial=0)),
        "mask_flipped": float((a.masks.dense() != b.masks.dense()).mean()) if len(a.scores) else 0.0,
    }
    row["ok"] = row["score_diff"] <= 1e-6 and row["box_diff"] <= 1e-3 and row["mask_flipped"] < 1e-4
    return row


def pipeline_rows(artifacts: Path, device, iterations: int = 5) -> list[dict]:
    """Per mode: the gpu path against the cpu path, and the gpu path's median ms (embedded image)."""
    image = coffee_jpeg()
    cpu, gpu = make_pipeline(artifacts), make_pipeline(artifacts, device)
    rows = []
    for mode, fields in MODES.items():
        row = {"mode": mode, **compare(cpu.run(make_request(image, fields)), gpu.run(make_request(image, fields)))}
        row["ms"] = median_ms(lambda f=fields: gpu.run(make_request(image, f)), device, 0, iterations)
        rows.append(row)
    return rows


def coffee_jpeg() -> bytes:
    """scikit-image's coffee photo (400×600, a cup) as JPEG bytes."""
    from PIL import Image  # noqa: PLC0415 (only for the probe photo)
    from skimage import data  # noqa: PLC0415 (optional: test extra; also on the GPU images)

    buffer = io.BytesIO()
    Image.fromarray(data.coffee()).save(buffer, "JPEG")
    return buffer.getvalue()


def pipeline_modules() -> dict:
    """The orchestrator's modules by short name (triton_repo/sam3/1 on sys.path)."""
    orchestrator_modules()
    import cache  # noqa: PLC0415 (after the sys.path setup)
    import pipeline  # noqa: PLC0415 (after the sys.path setup)
    import postprocess_torch  # noqa: PLC0415 (after the sys.path setup)
    import request  # noqa: PLC0415 (after the sys.path setup)
    import stages  # noqa: PLC0415 (after the sys.path setup)
    import text_tokens  # noqa: PLC0415 (after the sys.path setup)

    return {
        "cache": cache,
        "pipeline": pipeline,
        "post_torch": postprocess_torch,
        "request": request,
        "stages": stages,
        "text_tokens": text_tokens,
    }
