"""The benchmark's orchestration: ``run`` opens the target server, builds the workloads, runs the
sweep and the goals, and returns the JSON report; ``main`` is the ``sam3-bench`` command (the
report table on stdout, the JSON in ``--json``). Flags and --help: bench/args.py.

One job per module: args (command line), workloads (photos and requests), timing (latencies, load),
stats (Triton statistics, P5 overhead), target (the server), sweep (protocol × mode × concurrency),
goals (throughput, P1–P5), baselines (the fp32 and bf16 references), config_echo (the configuration
part of the report), report (the table), progress (stderr lines).
"""

from __future__ import annotations

import json
import sys
import time

from bench.args import parse_args
from bench.baselines import add_bf16_reference, load_reference, reference_echo
from bench.config_echo import echo_config
from bench.goals import p1_box, p1_text, p2_clicks, p3_concepts, p4_mask_bytes, p5_per_mask, p5_summary, throughput
from bench.progress import log
from bench.report import format_table
from bench.stats import PhaseMetrics, Probes, TritonStats
from bench.sweep import sweep
from bench.target import Target, open_target
from bench.workloads import Workloads, box_around_astronaut, click_points, load_images, thresholds_for
from client.api import Sam3Client


def run(args) -> dict:
    """Everything: target, inputs, thresholds, sweep, goals; returns the JSON report."""
    started = time.time()
    with open_target(args) as target:
        protocols = [p for p in args.protocols if p in target.urls]
        if not protocols:
            raise SystemExit(f"no URL for protocol(s) {args.protocols}: give --grpc-url and/or --http-url")
        clients = {p: Sam3Client(target.urls[p], p, timeout_s=args.timeout) for p in protocols}
        stats = TritonStats(target.urls[protocols[0]], protocols[0], target.metrics_url)
        try:
            report = _measure(args, target, clients, stats)
        finally:
            stats.close()
            for client in clients.values():
                client.close()
    report["duration_s"] = round(time.time() - started, 1)
    return report


def _measure(args, target: Target, clients: dict, stats: TritonStats) -> dict:
    """Workloads, configuration echo, sweep, goals and references: the report without its duration."""
    main = next(iter(clients.values()))
    work = _workloads(main, args)
    config = echo_config(args, target, stats, work)
    probes = Probes(stats, PhaseMetrics(target.metrics_url))
    rows, p5 = sweep(clients, probes, work, args)
    rates = throughput(main, probes, work, args) if "point" in args.modes else None
    reference = load_reference(args, target)
    comparisons = _comparisons(main, work, reference, args, probes, p5, rates)
    config["reference"] = reference_echo(reference, target.checkpoint) if reference is not None else None
    config["reference_bf16"] = add_bf16_reference(comparisons, work, args, target)
    return {"config": config, "sweep": rows, "comparisons": comparisons}


def _workloads(client: Sam3Client, args) -> Workloads:
    """The photos, text thresholds (fixed, or calibrated on the server) and clicks of this run."""
    images = load_images(args.photo_scale)
    log("calibrating text thresholds" if args.threshold == "auto" else "fixed text threshold")
    return Workloads(
        images,
        thresholds_for(client, images, args),
        args.points_per_side,
        args.pred_iou_thresh,
        args.stability_thresh,
        click_points(args.clicks, args.photo_scale),
        box_around_astronaut(args.photo_scale),
    )


def _comparisons(client: Sam3Client, work: Workloads, reference, args, probes, p5: list, rates) -> dict:
    """The goals P1–P5 (None for a goal whose mode is not in --modes) and the throughput comparison."""
    modes, repeats = args.modes, args.compare_repeats
    return {
        "P1": p1_text(client, work, reference, repeats) if "text" in modes else None,
        "P1box": p1_box(client, work, reference, repeats) if "box" in modes else None,
        "P2": p2_clicks(client, work, reference, repeats) if "point" in modes else None,
        "P3": p3_concepts(client, work, repeats, probes) if "text" in modes else None,
        "P4": p4_mask_bytes(client, work, modes),
        "P5": {**p5_summary(p5), "per_mask": p5_per_mask(client, work, probes, repeats) if "text" in modes else None},
        "throughput": rates,
    }


def main(argv=None) -> int:
    """``sam3-bench``: run, print the table, write the JSON report; returns the exit status (0)."""
    args = parse_args(argv)
    report = run(args)
    print(format_table(report))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {args.json} ({report['duration_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
