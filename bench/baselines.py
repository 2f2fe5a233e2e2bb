"""The references the goals compare against, on the served checkpoint: transformers' pipeline in
fp32 (P1, P2) and, as a second reference, under CPU bf16 autocast (timed after the goals)."""

from __future__ import annotations

from bench.goals import ratio, reference_text
from bench.progress import log
from bench.reference import ReferencePipeline
from bench.target import Target
from bench.timing import latency_stats, repeat_timed
from bench.workloads import Workloads


def load_reference(args, target: Target):
    """ReferencePipeline on the served checkpoint, or None (--no-reference, or no checkpoint known)."""
    if args.no_reference or target.checkpoint is None:
        log("reference skipped: " + ("--no-reference" if args.no_reference else "no --checkpoint given"))
        return None
    log(f"loading the reference (transformers, CPU fp32) from {target.checkpoint}")
    return ReferencePipeline(target.checkpoint)


def reference_echo(reference: ReferencePipeline, checkpoint) -> dict:
    """The configuration echo of a loaded reference: checkpoint, device, dtype, torch threads."""
    import torch  # noqa: PLC0415 (optional: export extra; only once a reference has been loaded)

    return {
        "checkpoint": str(checkpoint),
        "device": "cpu",
        "dtype": reference.dtype,
        "torch_threads": torch.get_num_threads(),
    }


def add_bf16_reference(comparisons: dict, work: Workloads, args, target: Target) -> dict | None:
    """Time the same P1/P2 workloads on transformers under CPU bf16 autocast (same checkpoint, inputs)
    and add ``reference_bf16`` / ``speedup_bf16`` (P1 also ``speedup_warm_bf16``) beside the fp32
    reference's keys. The server's times are the ones already measured. Returns its config echo."""
    if args.no_reference or target.checkpoint is None:
        return None
    log(f"loading the second reference (transformers, CPU bf16 autocast) from {target.checkpoint}")
    reference, repeats = ReferencePipeline(target.checkpoint, bf16=True), args.compare_repeats
    p1, p1box, p2 = comparisons.get("P1"), comparisons.get("P1box"), comparisons.get("P2")
    if p1box:
        image = work.images["astronaut"].data
        ref = latency_stats(repeat_timed(lambda _: reference.box(image, work.box), repeats))
        p1box.update(reference_bf16=ref, speedup_bf16=ratio(ref.get("p50_ms"), p1box["server_cold"].get("p50_ms")))
    if p1:
        ref = latency_stats(repeat_timed(lambda i: reference_text(reference, work, i), 2 * repeats))
        p1.update(
            reference_bf16=ref,
            speedup_bf16=ratio(ref.get("p50_ms"), p1["server_cold"].get("p50_ms")),
            speedup_warm_bf16=ratio(ref.get("p50_ms"), p1["server_warm"].get("p50_ms")),
        )
    if p2:
        image = work.images["astronaut"].data
        ref = latency_stats(repeat_timed(lambda _: [reference.point(image, [c], [1]) for c in work.clicks], repeats))
        p2.update(reference_bf16=ref, speedup_bf16=ratio(ref.get("p50_ms"), p2["server_cached"].get("p50_ms")))
    return reference_echo(reference, target.checkpoint)
