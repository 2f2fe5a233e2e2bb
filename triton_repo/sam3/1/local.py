"""Component graphs run inside the orchestrator's own process (cpu target, ``local_components``).

Why: a component call through BLS crosses two Python-backend processes and the Triton server, each
way. For a click on an embedded image that hop cost more CPU than the prompt head itself (bench model,
docs/BENCHMARK.md "Where a click's CPU goes": the two sam3_prompt stubs spent 12.75 ms of CPU per
click where the head's own inference takes 5.3 ms). Run in this process, a head reads the cached image
features where they lie (the arena) and its outputs come back as arrays, with no copy and no message.

The ``local_components`` parameter (written by export/repository.py from the same values as the
component model's own config) is JSON: {component: {"onnx_file": path relative to this directory,
"runtime", "precision", "threads", "cache_dir", "static_shapes", "static_precisions", "instances"}}.
Each component gets one wide runner with ``threads`` inference threads (0: the runtime's default, all
cores) for a call that has the component to itself, and ``instances`` narrow runners of one thread for
calls that run beside others (stages.LocalStages says why). A runner is one OpenVINO infer request: one
call at a time. The component's Triton model (``sam3_<component>``) is still served for its own
clients and for the gpu target; the orchestrator no longer calls it.
"""

from __future__ import annotations

from pathlib import Path

from component_runtime import RuntimeLoadError, effective_precision, open_runner


class LocalLoadError(RuntimeError):
    """An in-process component cannot be loaded, or its graph does not match the spec."""


def open_local_runners(parameter: dict, here: Path, specs: dict, log) -> dict[str, tuple]:
    """{component: (wide runner, [narrow runners])} of the ``local_components`` parameter; ``specs``: sam3_spec
    ComponentSpecs by component name; ``log``: a callable taking a message."""
    return {component: _runners(component, entry, here, specs, log) for component, entry in parameter.items()}


def _runners(component: str, entry: dict, here: Path, specs: dict, log) -> tuple:
    """One component's wide runner and its ``entry["instances"]`` narrow ones, each checked against its spec."""
    if component not in specs:
        raise LocalLoadError(f"local_components: {component!r} is not one of the served components {sorted(specs)}")
    threads, narrow = int(entry.get("threads", 0)), int(entry.get("instances", 1))
    runners = [_runner(component, entry, here, specs[component], t, log) for t in [threads] + [1] * narrow]
    log(
        f"sam3_{component}: in process, {entry['runtime']} {runners[0].precision}, one runner of "
        f"{threads or 'all'} threads and {narrow} of one"
    )
    return runners[0], runners[1:]


def _runner(component: str, entry: dict, here: Path, spec, threads: int, log):
    """One runner of ``entry``'s graph with ``threads`` inference threads."""
    runtime = entry["runtime"]
    warn = lambda message: log(f"sam3_{component} (in process): {message}")  # noqa: E731
    try:
        runner = open_runner(
            runtime,
            here / entry["onnx_file"],
            effective_precision(runtime, entry["precision"], warn),
            threads,
            entry.get("cache_dir", ""),
            entry.get("static_shapes", []),
            [effective_precision(runtime, p, warn) for p in entry.get("static_precisions", [])],
        )
    except RuntimeLoadError as err:
        raise LocalLoadError(f"sam3_{component} (in process): {err}") from None
    _check(component, runner, spec)
    return runner


def _check(component: str, runner, spec) -> None:
    """LocalLoadError listing every difference between the graph's tensors and the spec's: names missing on
    either side, and each shared name's dtype and rank (the graph's ports as (name, Triton type, rank))."""
    problems = []
    for kind, graph, declared in (("input", runner.inputs(), spec.inputs), ("output", runner.outputs(), spec.outputs)):
        found, wanted = {name: (dtype, rank) for name, dtype, rank in graph}, {t.name: t for t in declared}
        if found.keys() != wanted.keys():
            problems.append(f"{kind}s: graph {sorted(found)} vs spec {sorted(wanted)}")
        for name in sorted(found.keys() & wanted.keys()):
            expected = (f"TYPE_{wanted[name].dtype}", len(wanted[name].shape))
            if found[name] != expected:
                problems.append(f"{kind} {name!r}: graph {found[name]} vs spec {expected} (type, rank)")
    if problems:
        raise LocalLoadError(
            f"sam3_{component} (in process): the graph does not match the spec: " + "; ".join(problems)
        )
