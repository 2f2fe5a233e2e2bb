"""Generic Triton Python-backend model: runs one ONNX graph in ONNX Runtime on the CPU.

Used by the ``cpu`` target of the model repository for every SAM3 component (sam3_vision,
sam3_text, sam3_concept, sam3_prompt). ``export/repository.py`` copies this file into
``<model>/1/model.py`` and places the graph beside it.

Config parameters (string values):
    onnx_file         path of the graph, relative to the model version dir (e.g. "vision.onnx")
    intra_op_threads  ONNX Runtime intra-op threads; "0" = ONNX Runtime's default

Load-time checks: the session's input and output names must equal the config's, with the same
dtypes and ranks (+1 for the batch axis when max_batch_size > 0); a mismatch fails the load with
a message listing every difference.

Batching: when max_batch_size > 0 (dynamic batching) the requests of one execute() call are
concatenated along axis 0, run once, and the outputs are split back by each request's batch
size. If that joint run fails, each request runs alone so that a bad request gets its own error
response and never fails the others. Models with max_batch_size 0 run each request alone.
"""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

ORT_TYPES = {"TYPE_FP32": "tensor(float)", "TYPE_FP16": "tensor(float16)", "TYPE_INT64": "tensor(int64)",
             "TYPE_INT32": "tensor(int32)", "TYPE_UINT8": "tensor(uint8)", "TYPE_BOOL": "tensor(bool)"}


class ModelLoadError(RuntimeError):
    """The ONNX graph does not match this model's config.pbtxt, or its file is missing."""


def _parameter(config: dict, key: str, default: str | None = None) -> str:
    value = config.get("parameters", {}).get(key, {}).get("string_value", default)
    if value is None:
        raise ModelLoadError(f"{config['name']}: config.pbtxt lacks parameter {key!r}; regenerate the "
                             "repository with export.repository.build_repository")
    return value


def _session(path: Path, threads: int) -> ort.InferenceSession:
    """CPU InferenceSession of ``path`` with ``threads`` intra-op threads (0 = default)."""
    if not path.is_file():
        raise ModelLoadError(f"ONNX file {path} not found: regenerate the model repository")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _mismatches(kind: str, declared: list, actual: list, batched: bool) -> list[str]:
    """Differences between config tensors (dicts) and session tensors (NodeArg) of one kind."""
    found = {a.name: a for a in actual}
    names = [t["name"] for t in declared]
    extra = sorted(found.keys() - set(names))
    missing = [n for n in names if n not in found]
    problems = [f"{kind}s {extra} are in the ONNX graph but not in config.pbtxt"] if extra else []
    problems += [f"{kind}s {missing} are in config.pbtxt but not in the ONNX graph"] if missing else []
    for t in (t for t in declared if t["name"] in found):
        arg, rank = found[t["name"]], len(t.get("dims", [])) + int(batched)
        if ORT_TYPES.get(t["data_type"]) != arg.type:
            problems.append(f"{kind} {t['name']!r}: config {t['data_type']} vs graph {arg.type}")
        elif len(arg.shape) != rank:
            problems.append(f"{kind} {t['name']!r}: config rank {rank} vs graph rank {len(arg.shape)}")
    return problems


class TritonPythonModel:
    """One ONNX graph served through ONNX Runtime (CPU)."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.name = config["name"]
        self.batched = int(config.get("max_batch_size", 0)) > 0
        self.inputs = [t["name"] for t in config["input"]]
        self.outputs = [t["name"] for t in config["output"]]
        version_dir = Path(args["model_repository"]) / args["model_version"]
        path = version_dir / _parameter(config, "onnx_file")
        self.session = _session(path, int(_parameter(config, "intra_op_threads", "0")))
        problems = (_mismatches("input", config["input"], self.session.get_inputs(), self.batched)
                    + _mismatches("output", config["output"], self.session.get_outputs(), self.batched))
        if problems:
            raise ModelLoadError(f"{self.name}: {path.name} does not match config.pbtxt: " + "; ".join(problems)
                                 + ". Re-export the graph or regenerate the repository from the same spec.")

    def _read(self, request) -> dict:
        """{input name: numpy array} of one request."""
        arrays = {}
        for name in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError(f"{self.name}: input {name!r} is missing from the request")
            arrays[name] = tensor.as_numpy()
        return arrays

    def _run(self, feeds: dict) -> list:
        """Session outputs in config order, as C-contiguous arrays."""
        return [np.ascontiguousarray(a) for a in self.session.run(self.outputs, feeds)]

    def _response(self, arrays: list):
        tensors = [pb_utils.Tensor(n, a) for n, a in zip(self.outputs, arrays)]
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def _single(self, feeds) -> object:
        """Response for one request; any failure becomes that request's error response."""
        if isinstance(feeds, Exception):
            return self._error(feeds)
        try:
            return self._response(self._run(feeds))
        except Exception as e:  # noqa: BLE001 - reported to the client as this request's error
            return self._error(e)

    def _error(self, error: Exception):
        message = f"{self.name}: {type(error).__name__}: {error}"
        return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))

    def _joint(self, feeds: list) -> list | None:
        """Responses of a concatenated run of batched requests, or None if they cannot run together."""
        sizes = [f[self.inputs[0]].shape[0] for f in feeds]
        try:
            joined = {n: np.concatenate([f[n] for f in feeds], axis=0) for n in self.inputs}
            outputs = self._run(joined)
        except Exception:  # noqa: BLE001 - fall back to one run per request, each reports its own error
            return None
        if any(o.shape[0] != sum(sizes) for o in outputs):
            return None
        splits = np.cumsum(sizes)[:-1]
        parts = [np.split(o, splits, axis=0) for o in outputs]
        return [self._response([p[i] for p in parts]) for i in range(len(feeds))]

    def execute(self, requests):
        """One response per request, in order; errors are per request."""
        feeds = []
        for request in requests:
            try:
                feeds.append(self._read(request))
            except Exception as e:  # noqa: BLE001 - becomes this request's error response
                feeds.append(e)
        good = [f for f in feeds if not isinstance(f, Exception)]
        joint = self._joint(good) if self.batched and len(good) > 1 else None
        if joint is None:
            return [self._single(f) for f in feeds]
        ordered = iter(joint)
        return [self._error(f) if isinstance(f, Exception) else next(ordered) for f in feeds]

    def finalize(self):
        self.session = None
