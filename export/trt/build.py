"""ONNX graphs → TensorRT engines, each one through the parity gate.

Per component: the optimization profile comes from the spec; the build tries the attempts of
export.trt.rules (reduced precision with each rule set of its ladder, then FP32) and keeps
the first engine that builds AND matches ONNX Runtime. A build error (EngineBuildError) moves
on exactly like a parity failure (EngineParityError). TensorRT is imported lazily; without a
GPU every entry point raises GpuUnavailableError at once.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from export.manifest import load_manifest, sha256
from export.trt.env import check_tensorrt_version, import_tensorrt, installed_tensorrt_version, require_gpu
from export.trt.errors import EngineBuildError, EngineParityError
from export.trt.files import (
    ENGINES_SUMMARY,
    TIMING_CACHE,
    engine_dir,
    engine_is_current,
    engine_path,
    load_timing_cache,
    record_path,
    save_timing_cache,
    write_atomic,
)
from export.trt.rules import (
    Attempt,
    PrecisionRules,
    attempts,
    attempts_key,
    check_components,
    check_precision,
    fp32_nodes,
    layer_precision,
    parse_precision,
)
from export.trt.runtime import compare_engine, engine_latency
from sam3_spec import ComponentSpec

DEFAULT_WORKSPACE_GIB = 8.0
Log = Callable[[str], None]


# ---------------------------------------------------------------- profiles (pure)


def optimization_profile(spec: ComponentSpec) -> dict[str, tuple[tuple, tuple, tuple]]:
    """{input name: (min shape, opt shape, max shape)} for every input with a dynamic axis.

    Shapes come from ``spec.profiles`` through TensorSpec.resolve, so static dims are the
    spec's ints. Fully static inputs need no profile entry and are left out.
    """
    missing = sorted({a for t in spec.inputs for a in t.dynamic_axes().values()} - set(spec.profiles))
    if missing:
        raise ValueError(f"{spec.name}: dynamic axes {missing} have no Profile in the spec (sam3_spec.py)")
    sizes = [spec.sizes(which) for which in ("min", "opt", "max")]
    return {t.name: tuple(t.resolve(s) for s in sizes) for t in spec.inputs if t.dynamic_axes()}


# ---------------------------------------------------------------- the parity gate (pure control flow)


def first_passing(plan: Sequence[Attempt], try_one: Callable[[Attempt], dict], log: Log = print) -> dict:
    """Run ``try_one`` on each attempt until one returns; a build or parity error moves to the next.

    Returns the successful facts plus ``"attempts"``: one {"attempt", "error"} entry per failed
    try. The last attempt's error propagates (nothing left to fall back on).
    """
    failed = []
    for i, attempt in enumerate(plan):
        try:
            facts = try_one(attempt)
        except (EngineBuildError, EngineParityError) as err:
            if i == len(plan) - 1:
                raise
            kind = "build failed" if isinstance(err, EngineBuildError) else "parity failed"
            log(f"{attempt.label}: {kind}; trying {plan[i + 1].label}: {str(err).splitlines()[0]}")
            failed.append({"attempt": attempt.label, "error": f"{kind}: {err}"})
            continue
        return {**facts, "attempts": failed}
    raise ValueError("no attempt to try")


# ---------------------------------------------------------------- TensorRT glue (GPU)


def layer_kind(layer, trt) -> str:
    """ "SOFTMAX", "REDUCE.AVG", "ELEMENTWISE.POW", "UNARY.SQRT", ... for a TensorRT ILayer."""
    subclass = {
        trt.LayerType.ELEMENTWISE: trt.IElementWiseLayer,
        trt.LayerType.UNARY: trt.IUnaryLayer,
        trt.LayerType.REDUCE: trt.IReduceLayer,
    }.get(layer.type)
    if subclass is None:
        return layer.type.name
    layer.__class__ = subclass  # TensorRT's documented downcast idiom for reading .op
    return f"{layer.type.name}.{layer.op.name}"


def apply_precision(network, config, precision: str, rules: PrecisionRules, nodes: frozenset[str], trt) -> list[str]:
    """Set the precision flag; pin the layers ``rules`` select to FP32 (layer + outputs); return their names.

    Constraints are preferred, not obeyed: a pinned layer without an FP32 tactic does not
    abort the build (the parity gate judges the engine).
    """
    if precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)  # fp32 means fp32, not TF32 matmuls
        return []
    config.set_flag(trt.BuilderFlag.FP16 if precision == "fp16" else trt.BuilderFlag.BF16)
    floats = {trt.float32, trt.float16, trt.bfloat16}
    pinned = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        outputs = [layer.get_output(j) for j in range(layer.num_outputs)]
        metadata = getattr(layer, "metadata", "")  # "[ONNX Layer: <node>]" (TensorRT 10 ONNX parser)
        if layer_precision(layer_kind(layer, trt), layer.name, rules, precision, nodes, metadata) != "fp32":
            continue
        if not outputs or any(o.dtype not in floats for o in outputs):
            continue
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            layer.set_output_type(j, trt.float32)
        pinned.append(layer.name)
    if pinned:
        config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
    return pinned


def _check_network_io(network, spec: ComponentSpec) -> None:
    """EngineBuildError unless the parsed graph's inputs/outputs are exactly the spec's."""
    got_in = [network.get_input(i).name for i in range(network.num_inputs)]
    got_out = [network.get_output(i).name for i in range(network.num_outputs)]
    want_in, want_out = [t.name for t in spec.inputs], [t.name for t in spec.outputs]
    if sorted(got_in) != sorted(want_in) or sorted(got_out) != sorted(want_out):
        raise EngineBuildError(
            f"{spec.name}: ONNX graph has inputs {got_in} / outputs {got_out}, the spec says "
            f"{want_in} / {want_out}; re-export with `python -m export onnx`"
        )


def _parse_onnx(trt, builder, logger, onnx_path: Path, spec: ComponentSpec):
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT could not parse {onnx_path}: {errors}")
    _check_network_io(network, spec)
    return network, parser


def _builder_config(trt, builder, spec: ComponentSpec, workspace_gib: float, opt_level: int):
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    config.builder_optimization_level = int(opt_level)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in optimization_profile(spec).items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    return config


def _progress_monitor(trt, log: Log, label: str):
    """A trt.IProgressMonitor that logs top-level build phases with elapsed seconds."""

    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.start, self.depth = time.monotonic(), {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            self.depth[phase_name] = 0 if parent_phase is None else self.depth.get(parent_phase, 0) + 1
            if self.depth[phase_name] <= 1:
                log(f"  [{label} +{time.monotonic() - self.start:6.0f}s] {phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name, step):
            return True

        def phase_finish(self, phase_name):
            self.depth.pop(phase_name, None)

    return Monitor()


def build_engine(
    onnx_path: Path,
    engine_file: Path,
    spec: ComponentSpec,
    attempt: Attempt,
    *,
    timing_cache: Path | None = None,
    workspace_gib: float = DEFAULT_WORKSPACE_GIB,
    opt_level: int = 3,
    log: Log = print,
) -> dict:
    """Build one engine from ``onnx_path`` into ``engine_file``; return facts for its record.

    The timing cache (if given) is loaded before and saved after the build, so later builds
    of the same layers on this GPU + TensorRT reuse measured tactics.
    """
    check_precision(attempt.precision)
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, parser = _parse_onnx(trt, builder, logger, onnx_path, spec)  # parser must outlive the build
    config = _builder_config(trt, builder, spec, workspace_gib, opt_level)
    nodes = fp32_nodes(onnx_path, attempt.rules) if attempt.precision != "fp32" else frozenset()
    pinned = apply_precision(network, config, attempt.precision, attempt.rules, nodes, trt)
    cache = config.create_timing_cache(load_timing_cache(timing_cache) if timing_cache else b"")
    config.set_timing_cache(cache, False)  # False: a cache of another device is an error
    monitor = _progress_monitor(trt, log, spec.name)  # kept referenced for the whole build
    config.progress_monitor = monitor
    start = time.monotonic()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT failed to build {spec.name} ({attempt.label}); see the TensorRT log above")
    write_atomic(engine_file, bytes(serialized))
    if timing_cache:
        save_timing_cache(timing_cache, config.get_timing_cache().serialize())
    return {
        "build_seconds": round(time.monotonic() - start, 1),
        "fp32_layers": len(pinned),
        "profile": {k: [list(s) for s in v] for k, v in optimization_profile(spec).items()},
    }


# ---------------------------------------------------------------- all components


@dataclass
class EngineBuild:
    """Result of build_engines: the directory holding <component>.plan and one record each."""

    engine_dir: Path
    gpu: str
    tensorrt_version: str
    records: dict[str, dict] = field(default_factory=dict)


def _build_checked(name, spec, onnx, target, attempt: Attempt, image_size, opts, log) -> dict:
    """Build one engine for ``attempt`` and check it against ONNX Runtime (if opts['parity'])."""
    log(f"building {name} engine ({attempt.label}) from {onnx.name} ...")
    facts = build_engine(
        onnx,
        engine_path(target, name),
        spec,
        attempt,
        timing_cache=target / TIMING_CACHE,
        workspace_gib=opts["workspace_gib"],
        opt_level=opts["opt_level"],
        log=log,
    )
    log(f"built {name} in {facts['build_seconds']} s ({facts['fp32_layers']} layers pinned to fp32)")
    plan = engine_path(target, name)
    parity = (
        compare_engine(plan, onnx, spec, image_size=image_size, precision=attempt.precision, log=log)
        if opts["parity"]
        else None
    )
    latency = engine_latency(plan, spec, image_size=image_size)
    log(f"{name}: p50 {latency['p50_ms']:.2f} ms at {latency['sizes']} (engine only)")
    return {
        **facts,
        "built_precision": attempt.precision,
        "rules": attempt.rules.name,
        "parity": parity,
        "latency": latency,
    }


def _build_component(name, spec, artifacts, entry, target, precision, image_size, trt_version, gpu, opts, log) -> dict:
    onnx, plan = artifacts / entry["file"], attempts(name, precision, opts["fallback_fp32"])
    if not opts["force"] and engine_is_current(
        target, name, entry["sha256"], precision, trt_version, attempts_key(plan)
    ):
        log(f"{name}: engine up to date ({engine_path(target, name)}), skipped")
        return json.loads(record_path(target, name).read_text())
    try:
        facts = first_passing(plan, lambda a: _build_checked(name, spec, onnx, target, a, image_size, opts, log), log)
    except (EngineBuildError, EngineParityError):
        engine_path(target, name).unlink(missing_ok=True)  # never leave a failed engine for a repository to pick up
        raise
    record = {
        "component": name,
        "onnx": entry["file"],
        "onnx_sha256": entry["sha256"],
        "tensorrt_version": trt_version,
        "gpu": gpu,
        "engine_sha256": sha256(engine_path(target, name)),
        "rules_key": attempts_key(plan),
        **facts,
        "precision": precision,
    }  # the key engine_is_current compares: what was asked for
    write_atomic(record_path(target, name), (json.dumps(record, indent=2) + "\n").encode())
    return record


def build_engines(
    artifacts_dir: Path,
    out_root: Path | None = None,
    components: Sequence[str] | str | None = None,
    precision: str | Mapping[str, str] | None = None,
    *,
    workspace_gib: float = DEFAULT_WORKSPACE_GIB,
    opt_level: int = 3,
    parity: bool = True,
    fallback_fp32: bool = True,
    force: bool = False,
    require_pinned_version: bool = True,
    log: Log = print,
) -> EngineBuild:
    """Build (or reuse) one TensorRT engine per component from ``artifacts_dir`` (python -m export onnx).

    Engines go to engine_dir(out_root, <tensorrt version>, <gpu name>) (out_root defaults to
    ``artifacts_dir/engines``); an engine whose record matches the ONNX sha256, precision and
    TensorRT version is reused unless ``force``. Each new engine goes through the parity gate
    (first_passing over rules.attempts; ``fallback_fp32`` False = only the first attempt).
    Arguments are checked before the GPU; without a GPU this raises GpuUnavailableError at once.
    """
    names = check_components(components)
    precisions = parse_precision(precision, names)
    gpu = require_gpu()
    trt_version = installed_tensorrt_version()
    if require_pinned_version:
        check_tensorrt_version(trt_version)
    artifacts = Path(artifacts_dir)
    manifest = load_manifest(artifacts, check_hashes=True)
    specs = manifest.specs()
    absent = [n for n in names if n not in specs]
    if absent:
        raise ValueError(f"components {absent} are not in {artifacts}/manifest.json (exported: {list(specs)})")
    target = engine_dir(out_root or artifacts / "engines", trt_version, gpu)
    target.mkdir(parents=True, exist_ok=True)
    log(f"TensorRT {trt_version} on {gpu}: engines → {target}")
    opts = dict(
        workspace_gib=workspace_gib, opt_level=opt_level, parity=parity, fallback_fp32=fallback_fp32, force=force
    )
    result = EngineBuild(target, gpu, trt_version)
    for name in names:
        result.records[name] = _build_component(
            name,
            specs[name],
            artifacts,
            manifest.components[name],
            target,
            precisions[name],
            manifest.dims.image_size,
            trt_version,
            gpu,
            opts,
            log,
        )
    write_atomic(target / ENGINES_SUMMARY, (json.dumps(result.records, indent=2) + "\n").encode())
    return result
