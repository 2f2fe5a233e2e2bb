"""What gpu-check measures, derived from the spec (pure): stages × batch sizes, and the targets.

A stage is one component model. Its "batch" is the leading dynamic axis of its outputs
(vision/text: ``batch``, concept: ``prompts``, prompt: ``objects``), so the plan follows
sam3_spec.py whatever the components are. Other dynamic axes sit at their profile's opt
size. A batch beyond the profile's max cannot run on the engine and is planned as skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

from sam3_spec import ComponentSpec

BATCHES = (1, 4, 8)
MODELS = {"bench": "bench", "full": "full-random"}  # --model → export/checkpoint.py built-in checkpoint
MIN_COSINE = 0.999  # per output, engine vs ONNX Runtime fp32
# Goals (docs/BENCHMARK.md): text request p50 on an H200, and batched throughput.
TARGETS = {"text_p50_ms": 15.0, "images_per_s": 120.0}
REFERENCE = "H100 24.9 ms end-to-end for a single-engine FP16 port"


@dataclass(frozen=True)
class StageRun:
    """One timing of one stage: component, batch, the axis sizes it runs at (None = skipped) and why."""

    component: str
    batch: int
    sizes: dict | None
    note: str = ""


def lead_axis(spec: ComponentSpec) -> str | None:
    """The dynamic axis that counts items per call: leading axis of the first output (None if static)."""
    first = spec.outputs[0].shape[0] if spec.outputs else None
    return first if isinstance(first, str) else None


def stage_sizes(spec: ComponentSpec, batch: int) -> StageRun:
    """Axis sizes to time ``spec`` at ``batch`` items: opt sizes with the lead axis set to ``batch``."""
    axis = lead_axis(spec)
    sizes = spec.sizes("opt")
    if axis is None:
        return StageRun(spec.name, batch, sizes if batch == 1 else None, "" if batch == 1 else "no batch axis")
    limit = spec.profiles[axis]
    if not limit.min <= batch <= limit.max:
        return StageRun(spec.name, batch, None, f"{axis}={batch} outside the profile {limit.min}..{limit.max}")
    return StageRun(spec.name, batch, {**sizes, axis: batch})


def timing_plan(specs: dict[str, ComponentSpec], batches=BATCHES) -> list[StageRun]:
    """Every (stage, batch) to time, in spec order then batch order."""
    return [stage_sizes(spec, b) for spec in specs.values() for b in batches]


def parse_batches(text: str) -> tuple[int, ...]:
    """ "1,4,8" → (1, 4, 8); ValueError for anything but positive integers."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise ValueError(f"--batches must be positive integers like 1,4,8; got {text!r}")
    return values
