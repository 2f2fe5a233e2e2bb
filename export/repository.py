"""Generate a Triton model repository from the spec (sam3_spec.py) and an artifacts dir.

The artifacts dir holds ``manifest.json``, one ``<component>.onnx`` per component and
``tokenizer.json`` (written by ``python -m export onnx``). The repository holds:

    sam3_vision, sam3_text, sam3_concept, sam3_prompt   one model per ComponentSpec
    sam3                                                 the orchestrator (Python backend, BLS)

Targets:
    cpu  each component is a Python-backend model running its graph on the CPU in OpenVINO
         (default; fp32 or bf16, see export/precision.py) or ONNX Runtime (fp32):
         ``1/`` = a copy of triton_repo/ort_component/1/ (model.py, component_runtime.py),
         ``1/<component>.onnx`` beside it. The precision each component serves in is a config
         parameter and is listed in ``precision.json`` at the repository root.
    gpu  ``platform: tensorrt_plan`` with ``1/model.plan`` from ``engines_dir/<component>.plan``;
         components without an engine fall back to ``onnxruntime_onnx`` with ``1/model.onnx``.

Every config.pbtxt is built as a dict from the spec and serialized by ``export.pbtxt.to_pbtxt``
(protobuf text format).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from export.manifest import Manifest, load_manifest
from export.pbtxt import Enum, to_pbtxt
from export.precision import PrecisionError, resolve_precision, served_precisions
from sam3_spec import (
    ORCHESTRATOR,
    SAM3_BATCHING,
    SAM3_INPUTS,
    SAM3_OUTPUTS,
    Batching,
    ComponentSpec,
    TensorSpec,
    by_reference,
    reference_parameter,
)

SOURCE_DIR = Path(__file__).resolve().parents[1] / "triton_repo"
COMPONENT_DIR = Path("ort_component") / "1"
ORT_COMPONENT = COMPONENT_DIR / "model.py"
PRECISION_FILE = "precision.json"
CPU_RUNTIMES = ("openvino", "onnxruntime", "ort")  # "ort" is short for onnxruntime
TARGETS = ("cpu", "gpu")
MARKER = ".sam3-repository"
VERSION = "1"
# Batched components (vision, text) get no batching delay: the orchestrator already sends ONE call per
# execute for all its uncached images (concepts), and Triton still merges the calls that queue while a
# component is busy (several `sam3` instances). A delay would only add its length to every cold request.
COMPONENT_QUEUE_DELAY_US = 0
# Instance counts that differ from 1, per target, by component name (``instances=`` overrides them).
# cpu: the prompt head is a chain of small ops that kept under one core of two busy (0.77-0.89, measured at
# OpenVINO's default threads), and its inputs are one image's features, so clicks on different images queue
# behind each other in one instance. Two instances run two at once (docs/BENCHMARK.md, "Prompt instances").
DEFAULT_INSTANCES = {"cpu": {"prompt": 2}, "gpu": {}}
# Components the cpu target's orchestrator runs in its own process (triton_repo/sam3/1/local.py), with the
# component model's runtime settings and instance count; their Triton models stay served for direct clients.
DEFAULT_LOCAL_HEADS = {"cpu": ("prompt",), "gpu": ()}
# One-thread runners per in-process head, at least: two calls at once keep two cores busy (a text request's
# concepts each make their own concept and mask calls; with one such runner they would queue on one core).
LOCAL_MIN_NARROW = 2
# One-thread runners of an in-process head whose count the caller did not name (``instances=``), where it
# differs from the component's instance count. prompt: three on the 2-core CPU served eight clients each
# clicking its own image 4-7 % faster than two (docs/BENCHMARK.md, eighteenth stop); a runner costs about
# 0.25 GB at real size (bf16).
LOCAL_DEFAULT_NARROW = {"prompt": 3}
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc")


class RepositoryError(RuntimeError):
    """The model repository cannot be built from these artifacts / options."""


# ---------------------------------------------------------------- config builders (dicts)


def triton_dtype(dtype: str) -> Enum:
    """config.pbtxt data type of a spec dtype (BYTES is TYPE_STRING in Triton)."""
    return Enum("TYPE_STRING" if dtype == "BYTES" else f"TYPE_{dtype}")


def tensor_config(t: TensorSpec, batched: bool) -> dict:
    """One ``input``/``output`` entry: name, data_type, dims (-1 dynamic; batch axis dropped if batched)."""
    entry = {"name": t.name, "data_type": triton_dtype(t.dtype), "dims": t.triton_dims(batched)}
    if t.optional:
        entry["optional"] = True
    return entry


def parameters(values: dict) -> list[dict]:
    """The ``parameters`` map; non-string values are JSON-encoded."""
    return [
        {"key": k, "value": {"string_value": v if isinstance(v, str) else json.dumps(v)}} for k, v in values.items()
    ]


def max_batch_size(spec: ComponentSpec) -> int:
    """Profile max of the batch axis, 0 when the component is not batched; checks the axis leads every tensor."""
    if spec.batch_axis is None:
        return 0
    unbatched = [t.name for t in spec.inputs + spec.outputs if t.shape[:1] != (spec.batch_axis,)]
    if unbatched:
        raise RepositoryError(
            f"{spec.name}: batch axis {spec.batch_axis!r} is not the leading axis of {unbatched}; fix sam3_spec.py"
        )
    return spec.profiles[spec.batch_axis].max


def component_config(spec: ComponentSpec, platform: str, count: int, params: dict | None = None) -> dict:
    """config.pbtxt dict of one component; platform 'python', 'tensorrt_plan' or 'onnxruntime_onnx'."""
    batch = max_batch_size(spec)
    kind = "KIND_CPU" if platform == "python" else "KIND_GPU"
    config = {"name": spec.triton_name}
    config.update({"backend": "python"} if platform == "python" else {"platform": platform})
    config.update(
        max_batch_size=batch,
        input=[tensor_config(t, batch > 0) for t in spec.inputs],
        output=[tensor_config(t, batch > 0) for t in spec.outputs],
        instance_group=[{"count": count, "kind": Enum(kind)}],
    )
    if batch:
        config["dynamic_batching"] = {"max_queue_delay_microseconds": COMPONENT_QUEUE_DELAY_US}
    if params:
        config["parameters"] = parameters(params)
    return config


def orchestrator_config(
    manifest: Manifest, target: str, count: int, models: dict, extra: dict, batching: Batching = SAM3_BATCHING
) -> dict:
    """config.pbtxt dict of ``sam3``: SAM3_INPUTS/OUTPUTS (variable-length inputs ragged), dynamic
    batching with a bounded queue (``batching``), parameters.

    Parameters: ``tokenizer`` (file relative to the version dir), ``dims`` (JSON of the
    manifest's Dims), ``target``, ``components`` (JSON {component: model name}), then ``extra``;
    on gpu also FORCE_CPU_ONLY_INPUT_TENSORS = "no" (BLS tensors stay on the GPU).
    """
    params = {
        "tokenizer": Path(manifest.tokenizer).name,
        "dims": asdict(manifest.dims),
        "target": target,
        "components": models,
    }
    if target == "gpu":
        params["FORCE_CPU_ONLY_INPUT_TENSORS"] = "no"
    kind = "KIND_GPU" if target == "gpu" else "KIND_CPU"
    return {
        "name": ORCHESTRATOR,
        "backend": "python",
        "max_batch_size": batching.max_batch_size,
        "input": [_ragged(tensor_config(t, False), t) for t in SAM3_INPUTS],
        "output": [tensor_config(t, False) for t in SAM3_OUTPUTS],
        "instance_group": [{"count": count, "kind": Enum(kind)}],
        "dynamic_batching": queue_config(batching),
        "parameters": parameters({**params, **extra}),
    }


def _ragged(entry: dict, t: TensorSpec) -> dict:
    """Mark inputs with a dynamic axis ragged, so requests of different lengths batch together."""
    if t.dynamic_axes():
        entry["allow_ragged_batch"] = True
    return entry


def queue_config(batching: Batching) -> dict:
    """``dynamic_batching`` of ``sam3``: the delay, and a queue policy only where ``batching`` sets one
    (a full queue or a request queued too long is refused at once: REJECT)."""
    config = {"max_queue_delay_microseconds": batching.max_queue_delay_us}
    policy = {}
    if batching.queue_timeout_us is not None:
        policy |= {
            "timeout_action": Enum("REJECT"),
            "default_timeout_microseconds": batching.queue_timeout_us,
            "allow_timeout_override": True,
        }
    if batching.max_queue_size is not None:
        policy["max_queue_size"] = batching.max_queue_size
    return config | ({"default_queue_policy": policy} if policy else {})


# ---------------------------------------------------------------- files


def _place(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (copy when linking is impossible, e.g. across filesystems)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _place_graph(artifacts: Path, onnx_file: str, version_dir: Path, name: str) -> None:
    """Place ``onnx_file`` as ``version_dir/name`` plus its external-data files (``<onnx_file>.*``)."""
    _place(artifacts / onnx_file, version_dir / name)
    for sidecar in sorted(artifacts.glob(f"{onnx_file}.*")):
        _place(sidecar, version_dir / sidecar.name)


def _write_config(model_dir: Path, config: dict) -> None:
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(to_pbtxt(config))


@dataclass(frozen=True)
class CpuRuntime:
    """How cpu components run: runtime ("openvino" | "onnxruntime"), inference threads (0 = the
    runtime's default), OpenVINO cache dir ("" = none), the precision per component and the static size
    sets each component compiles copies for (OpenVINO) and each copy's precision."""

    runtime: str
    threads: int
    cache_dir: str
    precisions: dict
    static_sizes: dict
    static_precisions: dict


def _write_cpu_component(spec, artifacts, out, count, source, cpu: CpuRuntime) -> None:
    version_dir = out / spec.triton_name / VERSION
    _place_graph(artifacts, spec.onnx_file, version_dir, spec.onnx_file)
    shutil.copytree(source / COMPONENT_DIR, version_dir, ignore=IGNORED, dirs_exist_ok=True)
    params = runtime_parameters(spec, cpu) | {
        "shared_axes": shared_axes(spec),
        "by_reference": reference_parameter(spec),  # image features through the orchestrator's arena
    }
    _write_config(out / spec.triton_name, component_config(by_reference(spec), "python", count, params))


def runtime_parameters(spec: ComponentSpec, cpu: CpuRuntime) -> dict:
    """How a cpu component's graph runs (file, runtime, precision, threads, OpenVINO cache and static copies):
    the same values for its Triton model and for the orchestrator's in-process copy (``local_components``)."""
    openvino = cpu.runtime == "openvino"
    return {
        "onnx_file": spec.onnx_file,
        "runtime": cpu.runtime,
        "precision": cpu.precisions[spec.name],
        "threads": str(cpu.threads),
        "cache_dir": cpu.cache_dir,
        "static_shapes": static_shapes(spec, cpu.static_sizes[spec.name]) if openvino else [],
        "static_precisions": cpu.static_precisions[spec.name] if openvino else [],
    }


def local_components(specs: list, narrow: dict, cpu: CpuRuntime) -> dict:
    """The orchestrator's ``local_components`` parameter: {component: runtime_parameters + "instances"} of
    ``specs``; "instances": ``narrow[component]``, its one-thread runners for calls that run beside others."""
    return {s.name: runtime_parameters(s, cpu) | {"instances": narrow[s.name]} for s in specs}


def static_shapes(spec: ComponentSpec, size_sets: list[dict] | None = None) -> list[dict[str, list]]:
    """[{input: shape}] at each of ``size_sets`` (default: the spec's ``static_size_sets``, its most common
    requests), one per static-shape copy that OpenVINO compiles; -1 where a set leaves an axis dynamic."""
    sets = spec.static_size_sets() if size_sets is None else size_sets
    return [{t.name: list(t.static_shape(sizes)) for t in spec.inputs} for sizes in sets]


def shared_axes(spec: ComponentSpec) -> dict[str, list]:
    """{axis name: [[input, axis index], ...]} for each dynamic axis that two or more inputs share.

    The component model checks every request against it, because a runtime may not: OpenVINO
    runs a graph fed inconsistent sizes without an error.
    """
    axes: dict[str, list] = {}
    for t in spec.inputs:
        for index, axis in t.dynamic_axes().items():
            axes.setdefault(axis, []).append([t.name, index])
    return {axis: uses for axis, uses in axes.items() if len(uses) > 1}


def default_cache_dir(out: Path) -> Path:
    """OpenVINO's model cache of the repository ``out``: beside it (``out`` is replaced at every build),
    one per repository: two servers compiling the same graph into one cache at once made OpenVINO fail
    ("cannot set permissions: No such file or directory [.../<hash>.blob]")."""
    return out.parent / f"openvino-cache-{out.name}"


def _cpu_runtime(manifest, artifacts, out, names, runtime, precision, threads, cache_dir, log) -> CpuRuntime:
    """Resolve runtime and precision ("auto" → bf16 where the CPU has it) and gate bf16 per component."""
    runtime = "onnxruntime" if runtime == "ort" else runtime
    if runtime not in CPU_RUNTIMES:
        raise RepositoryError(f"runtime must be one of {CPU_RUNTIMES}, got {runtime!r}")
    specs = {s.name: s for s in manifest.specs().values() if s.triton_name in names}
    try:
        resolved = resolve_precision(precision, runtime)
        served = served_precisions(artifacts, specs, manifest.dims.image_size, resolved, log)
    except PrecisionError as err:
        raise RepositoryError(str(err)) from None
    cache = "" if runtime != "openvino" else str(Path(cache_dir or default_cache_dir(out)).resolve())
    return CpuRuntime(runtime, threads, cache, *served)


def _write_gpu_component(spec, artifacts, out, count, engines_dir) -> str:
    """Write one gpu component; return its platform (tensorrt_plan or the onnxruntime_onnx fallback)."""
    version_dir = out / spec.triton_name / VERSION
    plan = Path(engines_dir) / f"{spec.name}.plan" if engines_dir else None
    if plan is not None and plan.is_file():
        _place(plan, version_dir / "model.plan")
        platform = "tensorrt_plan"
    else:
        _place_graph(artifacts, spec.onnx_file, version_dir, "model.onnx")
        platform = "onnxruntime_onnx"
    _write_config(out / spec.triton_name, component_config(spec, platform, count))
    return platform


def _write_orchestrator(manifest, artifacts, out, target, count, models, extra, source, batching, local) -> None:
    """``local``: the local_components parameter ({} = every component through BLS); their graphs go beside
    the orchestrator's code."""
    # copies triton_repo/sam3/1/sam3_spec.py and component_runtime.py (links to the top-level sam3_spec.py, the one
    # contract, and to ort_component's runtimes) as files
    shutil.copytree(source / ORCHESTRATOR, out / ORCHESTRATOR, ignore=IGNORED)
    _place(artifacts / manifest.tokenizer, out / ORCHESTRATOR / VERSION / Path(manifest.tokenizer).name)
    for entry in local.values():
        _place_graph(artifacts, entry["onnx_file"], out / ORCHESTRATOR / VERSION, entry["onnx_file"])
    extra = extra | ({"local_components": local} if local else {})
    _write_config(out / ORCHESTRATOR, orchestrator_config(manifest, target, count, models, extra, batching))


# ---------------------------------------------------------------- options


def _model_names(manifest: Manifest, models) -> list[str]:
    """Requested model names (component or Triton names accepted), default all + orchestrator."""
    specs = manifest.specs()
    known = {s.triton_name: s.triton_name for s in specs.values()} | {n: s.triton_name for n, s in specs.items()}
    known[ORCHESTRATOR] = ORCHESTRATOR
    wanted = list(known.values()) if models is None else list(models)
    unknown = [m for m in wanted if m not in known]
    if unknown:
        raise RepositoryError(
            f"unknown or not exported models {unknown}; these artifacts hold {sorted(set(known.values()))}"
        )
    return list(dict.fromkeys(known[m] for m in wanted))


def _instance_counts(manifest: Manifest, names: list[str], instances: dict | None, target: str) -> dict[str, int]:
    """{model name: instance count}: ``instances`` (keys: component or model names), else the target's
    DEFAULT_INSTANCES, else 1."""
    alias = {s.name: s.triton_name for s in manifest.specs().values()}
    counts = {alias.get(k, k): int(v) for k, v in (instances or {}).items()}
    bad = {k: v for k, v in counts.items() if k not in names or v < 1}
    if bad:
        raise RepositoryError(f"instances {bad}: each key must be one of {names} and each count ≥ 1")
    defaults = {alias[k]: v for k, v in DEFAULT_INSTANCES[target].items() if k in alias}
    return {n: counts.get(n, defaults.get(n, 1)) for n in names}


def _local_counts(counts: dict, heads: tuple, given: dict | None) -> tuple[dict, dict]:
    """(model instance counts, {head: one-thread runners}) for the in-process ``heads``. A head's runners take
    the instance count ``given`` (the caller's ``instances``) names for it, else LOCAL_DEFAULT_NARROW's or the
    model's default count, at least LOCAL_MIN_NARROW; its Triton model, left to direct clients, keeps one
    instance unless ``given`` sets one: another copy of the graph in an idle stub process would only hold
    memory (real size: about 0.3 GB per prompt-head instance)."""
    named = {key.removeprefix(f"{ORCHESTRATOR}_") for key in (given or {})}

    def runners(head: str) -> int:
        count = counts[f"{ORCHESTRATOR}_{head}"]
        return max(count if head in named else LOCAL_DEFAULT_NARROW.get(head, count), LOCAL_MIN_NARROW)

    narrow = {h: runners(h) for h in heads}
    return counts | {f"{ORCHESTRATOR}_{h}": 1 for h in heads if h not in named}, narrow


def _local_heads(names: list[str], target: str, heads) -> tuple[str, ...]:
    """The components the orchestrator runs in its process: ``heads`` (None: the target's default, those of
    them served); each must be a served component, and the gpu target has none."""
    served = {name.removeprefix(f"{ORCHESTRATOR}_") for name in names if name != ORCHESTRATOR}
    if heads is None:
        return tuple(h for h in DEFAULT_LOCAL_HEADS[target] if h in served and ORCHESTRATOR in names)
    heads = tuple(heads)
    if heads and target != "cpu":
        raise RepositoryError(f"local_heads {list(heads)}: only the cpu target runs components in the orchestrator")
    if bad := [h for h in heads if h not in served]:
        raise RepositoryError(f"local_heads {bad}: each must be one of the served components {sorted(served)}")
    return heads


def _check_source(source: Path, names: list[str], target: str) -> None:
    """The model code this build copies exists: ort_component (cpu components) and sam3 (orchestrator)."""
    orchestrator = source / ORCHESTRATOR / VERSION / "model.py"
    if ORCHESTRATOR in names and not orchestrator.is_file():
        raise RepositoryError(
            f"orchestrator source {orchestrator} not found; pass models= "
            f"without {ORCHESTRATOR!r} to build only the components"
        )
    if target == "cpu" and set(names) - {ORCHESTRATOR} and not (source / ORT_COMPONENT).is_file():
        raise RepositoryError(
            f"component model code {source / ORT_COMPONENT} not found; "
            "pass source= the project's triton_repo/ directory"
        )


def _fresh_dir(out: Path) -> Path:
    """A temporary sibling of ``out`` to build into; refuses to touch a non-empty ``out`` we did not write."""
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise RepositoryError(
            f"{out} is not empty and was not generated by build_repository; choose an empty or new directory"
        )
    tmp = out.parent / f".{out.name}.building-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _swap_in(tmp: Path, out: Path) -> None:
    """Replace ``out`` with the finished ``tmp`` directory."""
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


# ---------------------------------------------------------------- entry point


def build_repository(
    artifacts: Path,
    out: Path,
    target: str = "cpu",
    instances: dict[str, int] | None = None,
    engines_dir: Path | None = None,
    orchestrator_params: dict | None = None,
    *,
    models=None,
    intra_op_threads: int = 0,
    source: Path = SOURCE_DIR,
    batching: Batching = SAM3_BATCHING,
    runtime: str = "openvino",
    precision: str = "auto",
    cache_dir: Path | None = None,
    local_heads=None,
    log=None,
) -> Path:
    """Build the Triton model repository ``out`` from ``artifacts``; return ``out``.

    target: "cpu" (OpenVINO or ONNX Runtime in the Python backend) or "gpu" (TensorRT plans from
    ``engines_dir/<component>.plan``, else ONNX Runtime per component). instances: {model or
    component name: instance count} (default: DEFAULT_INSTANCES of the target, else 1).
    orchestrator_params: extra ``sam3`` config parameters (non-str values JSON-encoded). models: names to include (default: every exported
    component + ``sam3``). intra_op_threads: inference threads per cpu component, OpenVINO or ONNX
    Runtime (0 = the runtime's default). source: the triton_repo/ directory holding ort_component/ and sam3/.
    runtime (cpu): "openvino" (default) or "onnxruntime" ("ort"). precision (cpu): "auto" (bf16 where
    OpenVINO lists BF16 for this CPU, else fp32), "fp32" or "bf16"; a component whose bf16 graph
    fails the parity gate (export/precision.py) is served in fp32 and ``log`` (default: a line on
    stderr) says so. cache_dir:
    OpenVINO's model cache (default ``<out's parent>/openvino-cache-<out's name>``, outside the replaced ``out``).
    local_heads (cpu): components the orchestrator runs in its own process instead of calling their models
    (default DEFAULT_LOCAL_HEADS: the prompt head, where it is served; () = none).
    ``out`` is replaced atomically; it must be new, empty or a previous build_repository output.
    """
    if target not in TARGETS:
        raise RepositoryError(f"target must be one of {TARGETS}, got {target!r}")
    if engines_dir is not None and target != "gpu":
        raise RepositoryError("engines_dir is only used with target='gpu'")
    if target == "gpu" and (runtime, precision) != ("openvino", "auto"):
        raise RepositoryError(
            "runtime= and precision= choose how the cpu target runs; the gpu target's precision "
            "is chosen when its engines are built (python -m export trt --precision)"
        )
    artifacts, out, source = Path(artifacts), Path(out), Path(source)
    manifest = load_manifest(artifacts)
    names = _model_names(manifest, models)
    local_heads = _local_heads(names, target, local_heads)
    counts, narrow = _local_counts(_instance_counts(manifest, names, instances, target), local_heads, instances)
    _check_source(source, names, target)
    cpu = (
        _cpu_runtime(manifest, artifacts, out, names, runtime, precision, intra_op_threads, cache_dir, log or _log)
        if target == "cpu"
        else None
    )
    tmp = _fresh_dir(out)
    try:
        _write_models(
            manifest,
            artifacts,
            tmp,
            target,
            names,
            counts,
            engines_dir,
            orchestrator_params or {},
            source,
            cpu,
            batching,
            narrow,
        )
        if cpu is not None:
            _write_precision_file(tmp, cpu)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    (tmp / MARKER).write_text(json.dumps({"target": target, "models": names}) + "\n")
    _swap_in(tmp, out)
    return out


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _write_precision_file(out: Path, cpu: CpuRuntime) -> None:
    """``precision.json``: {"runtime", "threads", "cache_dir", "components": {component: "fp32" | "bf16"},
    "static_copies": {component: [the axis sizes of each static copy]}, "static_precisions": {component: [the
    precision of each static copy]}}."""
    openvino = cpu.runtime == "openvino"
    record = {
        "runtime": cpu.runtime,
        "threads": cpu.threads,
        "cache_dir": cpu.cache_dir,
        "components": cpu.precisions,
        "static_copies": cpu.static_sizes if openvino else {},
        "static_precisions": cpu.static_precisions if openvino else {},
    }
    (out / PRECISION_FILE).write_text(json.dumps(record, indent=2) + "\n")


def read_precisions(repo: Path) -> dict:
    """The ``precision.json`` record of a cpu repository ({} for a gpu repository or an older one)."""
    path = Path(repo) / PRECISION_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_models(
    manifest, artifacts, out, target, names, counts, engines_dir, extra, source, cpu, batching, narrow
) -> None:
    """``narrow``: {in-process head: its one-thread runners} (_local_counts)."""
    specs = {s.triton_name: s for s in manifest.specs().values()}
    for name in names:
        if name == ORCHESTRATOR:
            models = {s.name: s.triton_name for s in specs.values() if s.triton_name in names}
            local = local_components([s for s in specs.values() if s.name in narrow], narrow, cpu) if cpu else {}
            _write_orchestrator(manifest, artifacts, out, target, counts[name], models, extra, source, batching, local)
        elif target == "cpu":
            _write_cpu_component(specs[name], artifacts, out, counts[name], source, cpu)
        else:
            _write_gpu_component(specs[name], artifacts, out, counts[name], engines_dir)
