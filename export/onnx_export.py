"""torch → ONNX for one component, with every argument generated from its ComponentSpec."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from export.inputs import example_inputs
from sam3_spec import ComponentSpec

DEFAULT_OPSET = 18


class ExportError(RuntimeError):
    """torch.onnx.export failed for a component; the message names it and the cause."""


def dynamic_shapes(spec: ComponentSpec) -> dict:
    """torch.export dynamic_shapes: {input name: {axis: torch.export.Dim}} from the spec profiles."""
    dims = {axis: torch.export.Dim(axis, min=p.min, max=p.max) for axis, p in spec.profiles.items()}
    return {t.name: {i: dims[a] for i, a in t.dynamic_axes().items()} or None for t in spec.inputs}


def export_component(
    wrapper: torch.nn.Module, spec: ComponentSpec, path: Path, image_size: int, opset: int = DEFAULT_OPSET
) -> float:
    """Export ``wrapper`` to ``path`` at the spec's opt sizes; return seconds taken."""
    args = tuple(torch.from_numpy(v) for v in example_inputs(spec, _trace_sizes(spec), image_size).values())
    start = time.perf_counter()
    try:
        with torch.no_grad():
            program = torch.onnx.export(
                wrapper,
                args,
                input_names=[t.name for t in spec.inputs],
                output_names=[t.name for t in spec.outputs],
                dynamic_shapes=tuple(dynamic_shapes(spec).values()),
                opset_version=opset,
                dynamo=True,
                external_data=False,
                optimize=True,
                verbose=False,
            )
    except Exception as err:  # re-raised with the component named
        raise ExportError(f"exporting {spec.name} failed: {type(err).__name__}: {err}") from err
    for stale in Path(path).parent.glob(Path(path).name + ".*"):  # weights of an earlier export
        stale.unlink()
    program.save(str(path), external_data=_needs_external_data(wrapper))
    return time.perf_counter() - start


def _trace_sizes(spec: ComponentSpec) -> dict[str, int]:
    """Trace at sizes ≥ 2 on every dynamic axis so no axis is specialized to 1."""
    return {axis: max(2, p.opt) if p.max >= 2 else p.opt for axis, p in spec.profiles.items()}


def _needs_external_data(module: torch.nn.Module) -> bool:
    """ONNX protobufs cap at 2 GiB: store weights beside the graph above ~1.8 GB."""
    return sum(p.numel() * p.element_size() for p in module.parameters()) > 1_800_000_000
