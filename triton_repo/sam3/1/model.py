"""`sam3` — the orchestrator: a Triton Python-backend model that serves every SAM3 prompt mode.

Per request: decode + resize the image (preprocess.py), tokenize concepts (text_tokens.py),
call sam3_vision / sam3_text / sam3_concept / sam3_prompt through BLS (stages.py), run the
mode (pipeline.py), post-process like transformers (postprocess.py, amg.py) and answer with
typed tensors (export/spec.py SAM3_OUTPUTS). A bad request gets its own error response; the
other requests of the same execute() call are unaffected.

Config parameters (written by export/repository.py): tokenizer, dims, target, components,
image_cache_mb (default 1024), text_cache_mb (64), max_pixels (40e6).
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np



class TritonPythonModel:
    """Triton entry points: initialize (load + validate), execute (one response per request)."""

    def initialize(self, args):
        here = os.path.dirname(os.path.abspath(__file__))
        if here not in sys.path:
            sys.path.insert(0, here)
        import triton_python_backend_utils as pb_utils
        from cache import ByteLRU
        from pipeline import Sam3Pipeline
        from request import Limits
        from stages import BlsStages
        from sam3_spec import SAM3_INPUTS, Dims, component_specs  # export/spec.py, copied here at build
        from text_tokens import TextTokenizer

        self.pb = pb_utils
        params = _parameters(json.loads(args["model_config"]))
        dims = Dims(**json.loads(params["dims"]))
        self.input_names = [t.name for t in SAM3_INPUTS]
        outputs = {name: [t.name for t in spec.outputs] for name, spec in component_specs(dims).items()}
        tokenizer_path = os.path.join(here, params.get("tokenizer", "tokenizer.json"))
        if not os.path.isfile(tokenizer_path):
            raise pb_utils.TritonModelException(f"sam3: tokenizer file {tokenizer_path} not found")
        self.limits = Limits()
        self.image_cache = ByteLRU(int(float(params.get("image_cache_mb", 1024)) * 2**20))
        self.text_cache = ByteLRU(int(float(params.get("text_cache_mb", 64)) * 2**20))
        self.pipeline = Sam3Pipeline(BlsStages(pb_utils, outputs), TextTokenizer.from_file(tokenizer_path),
                                     dims, self.image_cache, self.text_cache,
                                     max_pixels=int(float(params.get("max_pixels", 40e6))),
                                     post=_post_module(params.get("target", "cpu")))
        self.metrics = _Metrics(pb_utils)

    def execute(self, requests):
        return [self._respond(request) for request in requests]

    def _respond(self, request):
        from errors import InputError
        from request import parse_request
        from stages import StageError
        try:
            req = parse_request(_inputs(self.pb, request, self.input_names), self.limits)
            start = time.perf_counter()
            result = self.pipeline.run(req)
            self.metrics.observe(req.mode, time.perf_counter() - start, self.image_cache, self.text_cache)
            return self.pb.InferenceResponse(output_tensors=_outputs(self.pb, result, req.mask_format))
        except InputError as err:
            return self._error(f"bad request: {err}", self.pb.TritonError.INVALID_ARG)
        except StageError as err:
            return self._error(str(err), self.pb.TritonError.INTERNAL)

    def _error(self, message: str, code):
        return self.pb.InferenceResponse(error=self.pb.TritonError(message, code))

    def finalize(self):
        self.image_cache = self.text_cache = None


def _parameters(config: dict) -> dict[str, str]:
    return {k: v["string_value"] for k, v in config.get("parameters", {}).items()}


def _post_module(target: str):
    """Post-processing for the target: numpy on CPU; torch on the GPU (tensors stay on the device)."""
    if target == "gpu":
        import postprocess_torch
        return postprocess_torch
    import postprocess
    return postprocess


def _inputs(pb_utils, request, names) -> dict:
    """{name: numpy array} of the inputs present in the request."""
    found = {}
    for name in names:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is not None:
            found[name] = tensor.as_numpy()
    return found


def _outputs(pb_utils, result, mask_format: str) -> list:
    """SAM3_OUTPUTS tensors of a Sam3Result (masks as RLE or bool, never both)."""
    from postprocess import encode_rle
    n, (h, w) = len(result.scores), result.image_hw
    rle = encode_rle(result.masks) if mask_format == "rle" else []
    masks = result.masks if mask_format == "bool" else np.zeros((0, h, w), bool)
    values = {"masks_rle": np.array(rle, dtype=object).reshape(len(rle)), "masks": masks,
              "boxes": result.boxes.reshape(n, 4).astype(np.float32), "scores": result.scores.astype(np.float32),
              "labels": result.labels.astype(np.int32), "iou_scores": result.iou_scores.astype(np.float32),
              "stability_scores": result.stability.astype(np.float32), "image_shape": np.array([h, w], np.int32)}
    return [pb_utils.Tensor(name, value) for name, value in values.items()]


class _Metrics:
    """Custom Prometheus metrics on Triton's /metrics: cache hits/misses and latency per mode."""

    def __init__(self, pb_utils):
        counter = pb_utils.MetricFamily.COUNTER
        self.hits = pb_utils.MetricFamily("sam3_cache_hits_total", "sam3 cache hits", counter)
        self.misses = pb_utils.MetricFamily("sam3_cache_misses_total", "sam3 cache misses", counter)
        self.latency = pb_utils.MetricFamily("sam3_request_seconds_total", "sam3 pipeline time per mode", counter)
        self.count = pb_utils.MetricFamily("sam3_requests_total", "sam3 successful requests per mode", counter)
        self._metrics, self._totals = {}, {}

    def observe(self, mode: str, seconds: float, image_cache, text_cache) -> None:
        self._metric(self.latency, mode=mode).increment(seconds)
        self._metric(self.count, mode=mode).increment(1)
        for name, cache in (("image", image_cache), ("text", text_cache)):
            self._delta(self.hits, name, cache.hits)
            self._delta(self.misses, name, cache.misses)

    def _delta(self, family, cache: str, total: int) -> None:
        key = (id(family), cache)
        change = total - self._totals.get(key, 0)
        if change:
            self._metric(family, cache=cache).increment(change)
        self._totals[key] = total

    def _metric(self, family, **labels):
        key = (id(family), tuple(sorted(labels.items())))
        if key not in self._metrics:
            self._metrics[key] = family.Metric(labels=labels)
        return self._metrics[key]
