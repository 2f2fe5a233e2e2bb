"""Which precision each cpu component serves in: detection of bf16 and the bf16 parity gate.

``resolve_precision``: the requested precision ("auto" | "fp32" | "bf16") for a runtime
("openvino" | "onnxruntime") on this CPU. ``auto`` is bf16 where OpenVINO's CPU plugin lists
"BF16" in OPTIMIZATION_CAPABILITIES, fp32 elsewhere; ONNX Runtime is fp32 only.

The bf16 gate: each component's graph runs in OpenVINO at fp32 and at bf16 on the same inputs
(export/inputs.py, at every ``parity_sizes`` entry of its spec); it passes when every output's
cosine similarity, bf16 vs fp32, is ≥ ``GATE_COSINE`` (0.9995) at every size (the parity sizes and
the ``static_size_sets``), in the dynamic graph. A component that fails is served in fp32. Each
static-shape copy (one per static size set) is gated on its own, because OpenVINO compiles it
differently, over ``STATIC_GATE_SEEDS`` inputs at each of its sizes (``ComponentSpec.filled``: a copy that
leaves an axis dynamic at its min, opt and max) with each output's values of all of them in one cosine (one
input of the concept stage's one-prompt copy has a single presence logit, whose cosine is 1 whenever
the signs agree). Where the dynamic graph passes, a copy whose bf16 fails is not compiled, and
requests of its shape run in the bf16 dynamic graph (measured: the bench model's prompt head at one
click gave cosine 0.9987 static, 0.99996 dynamic; serving such a copy in fp32 instead was no faster
than the bf16 dynamic graph at 16 objects). Where the dynamic graph fails, it serves fp32 and each
copy serves the precision its own gate allows (measured: the bench model's concept stage failed at
3 prompts with 2 exemplar boxes, presence logits off by up to 0.035, and passed at one text prompt,
cosine 0.99999 over 8 inputs: a text concept runs its bf16 copy, 86 → 63 ms a call). Results go to ``precision_report.json`` beside the graphs, keyed by the graph's size
and mtime, the OpenVINO version and the CPU, so a restart reuses them.

The gate runs the same runner class the Triton model uses (triton_repo/ort_component/1/
component_runtime.py), in a child process: OpenVINO's worker threads left in ``sam3-triton serve``
made it die with SIGSEGV on SIGTERM, before it could stop its tritonserver (measured: every time the
gate had run in-process; never without it). Needs openvino and numpy, not torch.
"""

from __future__ import annotations

import importlib.util
import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.inputs import example_inputs
from sam3_spec import ComponentSpec

REQUESTS = ("auto", "fp32", "bf16")
RUNTIMES = ("openvino", "onnxruntime")
GATE_COSINE = 0.9995
# what the gate runs: 3, the parity sizes and every static size set, with the static copies; 4, keyed by them
GATE_VERSION = 5  # 5: static copies gated over STATIC_GATE_SEEDS inputs
STATIC_GATE_SEEDS = 4
REPORT_NAME = "precision_report.json"
RUNTIME_MODULE = Path(__file__).resolve().parents[1] / "triton_repo" / "ort_component" / "1" / "component_runtime.py"


class PrecisionError(ValueError):
    """The requested runtime / precision cannot run on this machine."""


def runtime_module():
    """triton_repo/ort_component/1/component_runtime.py, the runners the Triton component model uses."""
    spec = importlib.util.spec_from_file_location("sam3_component_runtime", RUNTIME_MODULE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cpu_capabilities() -> list[str]:
    """OpenVINO's OPTIMIZATION_CAPABILITIES of the CPU (e.g. ['BF16', 'FP32', 'INT8', ...])."""
    return runtime_module().bf16_capable()[1]


def resolve_precision(requested: str, runtime: str, capabilities: list[str] | None = None) -> str:
    """ "fp32" or "bf16" for ``requested`` on ``runtime``; ``capabilities`` default: this CPU's.

    Raises PrecisionError for bf16 on ONNX Runtime or on a CPU without BF16, and for unknown names.
    """
    if requested not in REQUESTS or runtime not in RUNTIMES:
        raise PrecisionError(
            f"precision must be one of {REQUESTS} and runtime one of {RUNTIMES}; got {requested!r}, {runtime!r}"
        )
    if runtime == "onnxruntime" or requested == "fp32":
        if requested == "bf16":
            raise PrecisionError("ONNX Runtime serves these graphs in fp32 only: use --runtime openvino for bf16")
        return "fp32"
    capable = "BF16" in (cpu_capabilities() if capabilities is None else capabilities)
    if requested == "bf16" and not capable:
        raise PrecisionError(
            f"this CPU has no bf16 support (OpenVINO capabilities {capabilities or cpu_capabilities()}); "
            "use --precision auto or fp32"
        )
    return "bf16" if capable else "fp32"


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two arrays flattened (1.0 when both are all zero)."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    if norms == 0.0:
        return 1.0 if not (a.any() or b.any()) else 0.0
    return float(a @ b / norms)


@dataclass(frozen=True)
class GateResult:
    """bf16 vs fp32 of one component: the lowest cosine per output over the parity sizes."""

    component: str
    cosines: dict
    threshold: float = GATE_COSINE
    static_cosines: tuple = ()  # per static size set: {output: cosine} of its static bf16 copy vs fp32

    @property
    def ok(self) -> bool:
        return all(c >= self.threshold for c in self.cosines.values())

    @property
    def static_ok(self) -> list[bool]:
        """Per static size set: whether its static bf16 copy passes."""
        return [all(c >= self.threshold for c in cos.values()) for cos in self.static_cosines]

    def worst(self) -> tuple[str, float]:
        """(output, cosine) with the lowest cosine."""
        return min(self.cosines.items(), key=lambda kv: kv[1])


def gate_sizes(spec: ComponentSpec) -> list[dict]:
    """The parity sizes of ``spec`` plus its static size sets (what the served static copies run; a set that leaves
    an axis dynamic at the sizes of ``ComponentSpec.filled``), once each."""
    sizes = list(spec.parity_sizes)
    for static in spec.static_size_sets():
        sizes += [s for s in spec.filled(static) if s not in sizes]
    return sizes


def gate_component(path: Path, spec: ComponentSpec, image_size: int, threads: int = 0) -> GateResult:
    """Run ``path`` in OpenVINO fp32 and bf16: the dynamic graph at every size of :func:`gate_sizes` (the
    lowest cosine per output), then each static bf16 copy at its own sizes against fp32."""
    from export.repository import static_shapes  # noqa: PLC0415 (import cycle: export.repository imports export.precision)

    rt = runtime_module()
    runners = {p: rt.OpenVinoRunner(path, p, threads) for p in ("fp32", "bf16")}
    names, cosines = [t.name for t in spec.outputs], {}
    for seed, sizes in enumerate(gate_sizes(spec), start=1):
        feeds = example_inputs(spec, sizes, image_size, seed=seed)
        for name, value in _cosines(names, runners["fp32"], runners["bf16"], feeds).items():
            cosines[name] = min(cosines.get(name, 1.0), value)
    static = []
    for index, (sizes, shapes) in enumerate(zip(spec.static_size_sets(), static_shapes(spec))):
        copy = rt.OpenVinoRunner(path, "bf16", threads, static_shapes=[shapes])
        seeds = range(101 + index * STATIC_GATE_SEEDS, 101 + (index + 1) * STATIC_GATE_SEEDS)
        feeds = [example_inputs(spec, full, image_size, seed=seed) for full in spec.filled(sizes) for seed in seeds]
        static.append(_cosines(names, runners["fp32"], copy, *feeds))
    return GateResult(spec.name, cosines, static_cosines=tuple(static))


def _cosines(names: list[str], fp32, bf16, *feeds: dict) -> dict[str, float]:
    """{output: cosine of runner ``bf16``'s outputs vs runner ``fp32``'s} on every input of ``feeds``, each
    output's values of all of them concatenated."""
    pairs = [(fp32.run(names, f), bf16.run(names, f)) for f in feeds]
    return {
        name: cosine(*(np.concatenate([p[side][i].ravel() for p in pairs]) for side in (0, 1)))
        for i, name in enumerate(names)
    }


def _graph_key(path: Path, spec: ComponentSpec) -> dict:
    """What a cached gate result depends on: the graph file, the OpenVINO version, the CPU (its bf16 kernels
    differ: AMX and AVX512-BF16 round differently, and one component passed on one and not the other) and the
    sizes gated: ``static_ok`` lists one verdict per static size set, so a spec whose sets changed would
    otherwise read another copy's verdict (measured: a dropped box copy's pass served auto mode's 16-point
    copy, whose own cosine was 0.9977)."""
    import openvino as ov  # noqa: PLC0415 (optional: serve extra)

    stat = path.stat()
    return {
        "bytes": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "openvino": ov.__version__,
        "cpu": cpu_key(),
        "threshold": GATE_COSINE,
        "gate": GATE_VERSION,
        "sizes": gate_sizes(spec),
        "static_sizes": spec.static_size_sets(),
    }


BF16_ISA_FLAGS = ("amx_bf16", "amx_fp16", "amx_tile", "avx512_bf16", "avx512_fp16", "avx512f")


def cpu_key(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU as the gate sees it: OpenVINO's device name and the bf16-relevant ISA flags of /proc/cpuinfo
    (none where that file does not exist)."""
    import openvino as ov  # noqa: PLC0415 (optional: serve extra)

    flags = set()
    if cpuinfo.is_file():
        line = next((x for x in cpuinfo.read_text().splitlines() if x.startswith("flags")), "")
        flags = set(line.partition(":")[2].split())
    return " ".join([ov.Core().get_property("CPU", "FULL_DEVICE_NAME"), *(f for f in BF16_ISA_FLAGS if f in flags)])


def _read_report(artifacts: Path) -> dict:
    path = artifacts / REPORT_NAME
    return json.loads(path.read_text()) if path.is_file() else {}


def gate(artifacts: Path, specs: dict, image_size: int, log=print) -> dict[str, GateResult]:
    """{component: GateResult} for ``specs`` ({name: ComponentSpec}); reuses fresh entries of the report."""
    artifacts, report = Path(artifacts), _read_report(Path(artifacts))
    results = {}
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as child:
        for name, spec in specs.items():
            key, entry = _graph_key(artifacts / spec.onnx_file, spec), report.get(name, {})
            if entry.get("key") == key:
                results[name] = GateResult(name, entry["cosines"], static_cosines=tuple(entry["static_cosines"]))
                continue
            log(
                f"bf16 gate {name}: OpenVINO bf16 vs fp32 at {len(gate_sizes(spec))} shapes, "
                f"and its {len(spec.static_size_sets())} static cop{'y' if len(spec.static_size_sets()) == 1 else 'ies'}"
            )
            result = results[name] = _gate_in(child, artifacts / spec.onnx_file, spec, image_size)
            report[name] = {
                "key": key,
                "cosines": result.cosines,
                "ok": result.ok,
                "static_cosines": list(result.static_cosines),
                "static_ok": result.static_ok,
            }
    try:
        (artifacts / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")
    except OSError as err:  # a read-only artifacts dir: the results stand, the next start gates again
        log(f"bf16 gate: cannot write {artifacts / REPORT_NAME} ({err}); results not kept")
    return results


def _gate_in(child: ProcessPoolExecutor, path: Path, spec: ComponentSpec, image_size: int) -> GateResult:
    """gate_component in the ``child`` process; PrecisionError naming the component when OpenVINO fails."""
    try:
        return child.submit(gate_component, path, spec, image_size).result()
    except Exception as err:  # OpenVINO raises plain RuntimeErrors: name the component
        raise PrecisionError(
            f"{spec.triton_name}: OpenVINO cannot run {path} for the bf16 gate "
            f"({type(err).__name__}: {str(err).strip()[:500]}); re-export the model or serve with --precision fp32"
        ) from err


def component_precisions(artifacts: Path, specs: dict, image_size: int, precision: str, log=print) -> dict[str, str]:
    """{component: "fp32" | "bf16"} to serve: ``precision`` (resolved), bf16 only where the gate passes."""
    return served_precisions(artifacts, specs, image_size, precision, log)[0]


def served_precisions(
    artifacts: Path, specs: dict, image_size: int, precision: str, log=print
) -> tuple[dict, dict, dict]:
    """({component: "fp32" | "bf16"} of its dynamic graph, {component: [the static size sets it compiles]},
    {component: [each of those copies' precision]}) to serve ``precision`` (resolved): bf16 only where the gate
    passes. A bf16 component drops the static copies that fail theirs; an fp32 one keeps every copy, those
    that pass theirs in bf16."""
    if precision != "bf16":
        sets = {n: s.static_size_sets() for n, s in specs.items()}
        return {n: precision for n in specs}, sets, {n: [precision] * len(s) for n, s in sets.items()}
    results, chosen, static, copies = gate(artifacts, specs, image_size, log), {}, {}, {}
    for name, result in results.items():
        chosen[name] = "bf16" if result.ok else "fp32"
        sets = specs[name].static_size_sets()
        kept = [(s, ok) for s, ok in zip(sets, result.static_ok) if ok or not result.ok]
        static[name], copies[name] = [s for s, _ in kept], ["bf16" if ok else "fp32" for _, ok in kept]
        _log_verdict(name, result, sets, log)
    return chosen, static, copies


def _log_verdict(name: str, result: GateResult, sets: list[dict], log) -> None:
    """Say what the gate changed for component ``name`` (``sets``: its static size sets): fp32, and its copies
    that still run bf16; or, for a bf16 component, the static copies dropped."""
    passed = [s for s, ok in zip(sets, result.static_ok) if ok]
    failed = [s for s, ok in zip(sets, result.static_ok) if not ok]
    if not result.ok:
        output, value = result.worst()
        also = f"; its static copies at {passed} pass theirs and run bf16" if passed else ""
        log(
            f"{name}: bf16 failed its parity gate (cosine {value:.6f} < {GATE_COSINE} on {output!r} "
            f"vs OpenVINO fp32): serving fp32{also}"
        )
    elif failed:
        log(f"{name}: the static copies at {failed} failed the bf16 gate: those requests run in the dynamic graph")


def gate_lines(results: dict[str, GateResult]) -> list[str]:
    """One human-readable line per component: pass/fail and the worst output."""
    return [
        f"{name:<10} {'pass' if r.ok else 'FAIL'}  worst cosine {r.worst()[1]:.6f} ({r.worst()[0]})"
        for name, r in results.items()
    ]
