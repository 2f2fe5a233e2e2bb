"""Generic Triton Python-backend model: runs one ONNX graph on the CPU in OpenVINO or ONNX Runtime.

Used by the ``cpu`` target of the model repository for every SAM3 component (one model per
ComponentSpec of sam3_spec.py). ``export/repository.py`` copies this directory (model.py and
component_runtime.py) into ``<model>/1/`` and places the graph beside it.

Config parameters (string values):
    onnx_file   path of the graph, relative to the model version dir (e.g. "vision.onnx")
    runtime     "openvino" (default of new repositories) or "onnxruntime"
    precision   "fp32" or "bf16" (OpenVINO only): the effective precision chosen when the
                repository was built (after the bf16 parity gate, export/precision.py)
    threads     inference threads; "0" = the runtime's default (older repositories:
                ``intra_op_threads``)
    cache_dir   OpenVINO model cache directory ("" = no cache)
    static_shapes JSON [{input: shape}, ...] of the most common requests (OpenVINO compiles a
                static copy for each; "[]" = none)
    static_precisions JSON ["fp32" | "bf16", ...], one per static copy ("[]" = ``precision``): a copy
                that passed the bf16 gate at its shapes runs bf16 though the dynamic graph failed it
    shared_axes JSON {axis name: [[input, axis index], ...]}: dynamic axes several inputs share;
                a request whose inputs disagree on one gets its own error (OpenVINO would run it)
    by_reference JSON {"input": ref input, "output": written flag or null, "tensors": [names]}
                (sam3_spec.reference_parameter; "{}" = none): image features by reference
                (shared_features.py). The vision model, given one ref per image, writes its outputs
                (``tensors``) into the orchestrator's arena and answers only the written flag; a
                head reads its image-feature inputs (``tensors``) from the arena when a request
                sends a ref instead of them. Neither tensor is in the graph.

Precision at load: a "bf16" model on a CPU whose OpenVINO plugin does not list BF16 loads in
fp32 and says so in the log. The effective runtime and precision are logged at load.

Load-time checks: the graph's input and output names must equal the config's, with the same
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
import triton_python_backend_utils as pb_utils
from component_runtime import RuntimeLoadError, effective_precision, open_runner
from shared_features import ArenaMaps, FeatureRefError, parse_refs


class ModelLoadError(RuntimeError):
    """The ONNX graph does not match this model's config.pbtxt, or its file is missing."""


def _parameter(config: dict, key: str, default: str | None = None) -> str:
    value = config.get("parameters", {}).get(key, {}).get("string_value", default)
    if value is None:
        raise ModelLoadError(
            f"{config['name']}: config.pbtxt lacks parameter {key!r}; regenerate the "
            "repository with export.repository.build_repository"
        )
    return value


def _mismatches(kind: str, declared: list, actual: list, batched: bool) -> list[str]:
    """Differences between config tensors (dicts) and graph tensors [(name, Triton type, rank)] of one kind."""
    found = {name: (dtype, rank) for name, dtype, rank in actual}
    names = [t["name"] for t in declared]
    extra = sorted(found.keys() - set(names))
    missing = [n for n in names if n not in found]
    problems = [f"{kind}s {extra} are in the ONNX graph but not in config.pbtxt"] if extra else []
    problems += [f"{kind}s {missing} are in config.pbtxt but not in the ONNX graph"] if missing else []
    for t in (t for t in declared if t["name"] in found):
        (dtype, graph_rank), rank = found[t["name"]], len(t.get("dims", [])) + int(batched)
        if t["data_type"] != dtype:
            problems.append(f"{kind} {t['name']!r}: config {t['data_type']} vs graph {dtype}")
        elif graph_rank != rank:
            problems.append(f"{kind} {t['name']!r}: config rank {rank} vs graph rank {graph_rank}")
    return problems


def _axis_conflicts(arrays: dict, shared: dict) -> list[str]:
    """Descriptions of the shared axes on which the request's inputs disagree."""
    problems = []
    for axis, uses in shared.items():
        sizes = {
            f"{name}[{index}]": arrays[name].shape[index]
            for name, index in uses
            if name in arrays and arrays[name].ndim > index
        }
        if len(set(sizes.values())) > 1:
            problems.append(f"inputs disagree on axis {axis!r}: " + ", ".join(f"{k}={v}" for k, v in sizes.items()))
    return problems


def _effective_precision(name: str, runtime: str, precision: str) -> str:
    """``precision``, or "fp32" (logged) when bf16 is asked of a CPU whose OpenVINO lacks BF16."""
    return effective_precision(runtime, precision, lambda message: pb_utils.Logger.log_warn(f"{name}: {message}"))


def _static_precisions(name: str, runtime: str, precisions: list) -> list:
    """The static copies' precisions, each through ``_effective_precision`` ([] = the component's own)."""
    return [_effective_precision(name, runtime, p) for p in precisions]


def _copies(runner) -> list[str]:
    """Per static copy of ``runner``: "{input: shape} at <precision>" (-1: a dynamic axis), for the load log."""
    return [f"{dict(shapes)} at {p}" for (shapes, _), p in zip(runner.static_requests, runner.static_precisions)]


class TritonPythonModel:
    """One ONNX graph served through OpenVINO or ONNX Runtime (CPU)."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.name = config["name"]
        self.batched = int(config.get("max_batch_size", 0)) > 0
        graph_inputs, graph_outputs = self._by_reference(config)
        self.inputs = [t["name"] for t in graph_inputs]
        self.outputs = [t["name"] for t in graph_outputs]
        self.shared_axes = json.loads(_parameter(config, "shared_axes", "{}"))
        version_dir = Path(args["model_repository"]) / args["model_version"]
        path = version_dir / _parameter(config, "onnx_file")
        self.runner = self._open(config, path)
        problems = _mismatches("input", graph_inputs, self.runner.inputs(), self.batched) + _mismatches(
            "output", graph_outputs, self.runner.outputs(), self.batched
        )
        if problems:
            raise ModelLoadError(
                f"{self.name}: {path.name} does not match config.pbtxt: "
                + "; ".join(problems)
                + ". Re-export the graph or regenerate the repository from the same spec."
            )

    def _by_reference(self, config: dict) -> tuple[list, list]:
        """Set up features by reference from the ``by_reference`` parameter (none where it is absent) and
        return the config's input and output entries that are the graph's (without the ref tensors)."""
        reference = json.loads(_parameter(config, "by_reference", "{}"))
        self.ref_input, self.ref_output = reference.get("input"), reference.get("output")
        inputs = [t for t in config["input"] if t["name"] != self.ref_input]
        outputs = [t for t in config["output"] if t["name"] != self.ref_output]
        # {name: (one image's shape, dtype)} of the features this model writes (vision) or may read (heads): the
        # config's dims, which leave out a batch axis
        self.ref_layout = {
            t["name"]: (tuple(t.get("dims", [])), pb_utils.triton_string_to_numpy(t["data_type"]))
            for t in (outputs if self.ref_output else inputs)
            if t["name"] in reference.get("tensors", [])
        }
        self.arena = ArenaMaps(reference["file"], reference["header"], pb_utils.Logger.log_warn) if reference else None
        return inputs, outputs

    def _open(self, config: dict, path: Path):
        """The runner named by the config's runtime / precision / threads / cache_dir parameters."""
        runtime = _parameter(config, "runtime", "onnxruntime")
        precision = _effective_precision(self.name, runtime, _parameter(config, "precision", "fp32"))
        threads = int(_parameter(config, "threads", _parameter(config, "intra_op_threads", "0")))
        try:
            runner = open_runner(
                runtime,
                path,
                precision,
                threads,
                _parameter(config, "cache_dir", ""),
                json.loads(_parameter(config, "static_shapes", "[]")),
                _static_precisions(self.name, runtime, json.loads(_parameter(config, "static_precisions", "[]"))),
            )
        except RuntimeLoadError as err:
            raise ModelLoadError(f"{self.name}: {err}") from None
        pb_utils.Logger.log_info(
            f"{self.name}: {path.name} on {runtime}, precision {runner.precision}, threads {threads or 'default'}, "
            f"static copies {_copies(runner) or 'none'}"
        )
        return runner

    def _read(self, request) -> tuple[dict, list | None]:
        """({input name: numpy array}, the request's features refs or None) of one request; a head's image
        features left out of a request that sends a ref are views of the arena."""
        present = {tensor.name(): tensor for tensor in request.inputs()}  # one call: each builds every tensor
        refs = self._refs(present)
        arrays = {name: present[name].as_numpy() for name in self.inputs if name in present}
        missing = [n for n in self.inputs if n not in arrays]
        if refs and not self.ref_output and set(missing) <= self.ref_layout.keys():
            arrays |= self.arena.views(refs[0], {n: self.ref_layout[n] for n in missing})
        elif missing:
            raise ValueError(f"{self.name}: input {missing[0]!r} is missing from the request")
        conflicts = _axis_conflicts(arrays, self.shared_axes)
        if conflicts:
            raise ValueError(f"{self.name}: " + "; ".join(conflicts))
        return arrays, refs

    def _refs(self, present: dict) -> list | None:
        """The request's features refs (one per image), or None where it sends none; ``present``: {name: input
        tensor} of the request."""
        tensor = present.get(self.ref_input) if self.ref_input else None
        return None if tensor is None else parse_refs(tensor.as_numpy())

    def _run(self, feeds: dict, shared: bool) -> list:
        """Runner outputs in config order, as C-contiguous arrays. ``shared``: the only run of this
        execute(), so its outputs may be views of the runtime's buffers. A response tensor keeps its
        array and copies it into shared memory only after execute() returns (python backend), and the
        next run comes with the next execute(); with two runs in one execute() the second would
        overwrite the first one's outputs before they are copied."""
        return [np.ascontiguousarray(a) for a in self.runner.run(self.outputs, feeds, shared)]

    def _response(self, arrays: list, refs: list | None = None):
        """The outputs ``arrays`` as a response; with refs (vision), written into the arena instead, and the
        response holds only the written flag."""
        if refs is None or not self.ref_output:
            return pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(n, a) for n, a in zip(self.outputs, arrays)]
            )
        self._write(refs, dict(zip(self.outputs, arrays)))
        written = np.ones((len(refs), 1), np.int32)
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.ref_output, written)])

    def _write(self, refs: list, outputs: dict) -> None:
        """Copy image i of every output into the arena at ``refs[i]``."""
        batch = next(iter(outputs.values())).shape[0]
        if len(refs) != batch:
            raise FeatureRefError(f"features_ref: {len(refs)} refs for a batch of {batch} images")
        for i, ref in enumerate(refs):
            for name, view in self.arena.views(ref, self.ref_layout).items():
                np.copyto(view, outputs[name][i])

    def _single(self, feeds, shared: bool) -> object:
        """Response for one request; any failure becomes that request's error response."""
        if isinstance(feeds, Exception):
            return self._error(feeds)
        arrays, refs = feeds
        try:
            return self._response(self._run(arrays, shared), refs)
        except Exception as e:  # noqa: BLE001 - reported to the client as this request's error
            return self._error(e)

    def _error(self, error: Exception):
        message = f"{self.name}: {type(error).__name__}: {error}"
        return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))

    def _joint(self, feeds: list) -> list | None:
        """Responses of a concatenated run of batched requests ([(arrays, refs)]), or None if they cannot run
        together."""
        sizes = [arrays[self.inputs[0]].shape[0] for arrays, _ in feeds]
        try:
            joined = {n: np.concatenate([arrays[n] for arrays, _ in feeds], axis=0) for n in self.inputs}
            outputs = self._run(joined, shared=True)
        except Exception:  # noqa: BLE001 - fall back to one run per request, each reports its own error
            return None
        if any(o.shape[0] != sum(sizes) for o in outputs):
            return None
        splits = np.cumsum(sizes)[:-1]
        parts = [np.split(o, splits, axis=0) for o in outputs]
        return [self._answer([p[i] for p in parts], refs) for i, (_, refs) in enumerate(feeds)]

    def _answer(self, arrays: list, refs: list | None):
        """``_response``, or the error response of a ref that cannot be written (that request's alone)."""
        try:
            return self._response(arrays, refs)
        except Exception as e:  # noqa: BLE001 - reported to the client as this request's error
            return self._error(e)

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
            shared = len(good) == 1  # one run in this execute()
            return [self._single(f, shared) for f in feeds]
        ordered = iter(joint)
        return [self._error(f) if isinstance(f, Exception) else next(ordered) for f in feeds]

    def finalize(self):
        self.runner = None
