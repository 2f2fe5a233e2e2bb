"""The sweep: per protocol × mode × concurrency, warm-up then one load per cell; each cell's row
(latency percentiles in ms, requests/s, requests per execution) and, at the lowest concurrency,
its P5 overhead row (ms per request). A cold sweep adds a P5 row per mode on an embedded image
(``cache: warm``: one image_id, so no decode and no vision call), the path of a web app's clicks."""

from __future__ import annotations

import numpy as np

from bench.progress import log
from bench.stats import Probes, batch_sizes, overhead
from bench.timing import latency_stats, run_load
from bench.workloads import Workloads, fresh_id
from sam3_spec import ORCHESTRATOR


def sweep(clients: dict, probes: Probes, work: Workloads, args) -> tuple[list, list]:
    """Warm-up, then every protocol × mode × concurrency cell; returns (rows, P5 rows)."""
    rows, p5 = [], []
    for protocol, client in clients.items():
        for mode in args.modes:
            request = sweep_request(work, mode, args.cache)
            log(f"warm-up {protocol} {mode}: {args.warmup} request(s)")
            for i in range(args.warmup):
                request(client, i)
            for concurrency in args.concurrency:
                row, load, delta, phases = cell(client, probes, request, concurrency, args.repeats)
                rows.append({"protocol": protocol, "mode": mode, **row})
                if concurrency == args.concurrency[0]:
                    p5.append(_p5_row(protocol, mode, concurrency, args.cache, load, delta, phases))
            if args.cache == "cold":
                p5.append(_embedded_p5(client, probes, work, mode, args))
    return rows, p5


def _embedded_p5(client, probes: Probes, work: Workloads, mode: str, args) -> dict:
    """The P5 row of ``mode`` on embedded images at the lowest concurrency (warm-up: one request per photo
    embeds it, then --warmup more)."""
    request = sweep_request(work, mode, "warm")
    for i in first_per_photo(work, mode, args.repeats) + list(range(args.warmup)):
        request(client, i)
    _, load, delta, phases = cell(client, probes, request, args.concurrency[0], args.repeats, "embedded image")
    return _p5_row(client.protocol, mode, args.concurrency[0], "warm", load, delta, phases)


def _p5_row(protocol: str, mode: str, concurrency: int, cache: str, load, delta: dict, phases: dict) -> dict:
    return {
        "protocol": protocol,
        "mode": mode,
        "concurrency": concurrency,
        "cache": cache,
        **overhead(delta, load.latencies, phases),
    }


def sweep_request(work: Workloads, mode: str, cache: str):
    """request(client, i) for one sweep cell; cold: a fresh image_id per request, warm: one per photo."""

    def request(client, i):
        name = work.image_of(mode, i)
        return work.call(client, mode, i, fresh_id(name) if cache == "cold" else f"bench-{name}")

    return request


def own_image_request(work: Workloads, mode: str, per_client: int):
    """request(client, i) where each client sends ``mode`` on embedded images of its own: client ``k = i //
    per_client`` (bench.timing.run_load numbers client k's requests k * per_client ...) uses the id
    ``bench-client-<k>-<photo>``. Its first request on a photo carries the image, its later ones the id alone."""

    def request(client, i):
        return work.call(client, mode, i, f"bench-client-{i // per_client}-{work.image_of(mode, i)}")

    return request


def first_per_photo(work: Workloads, mode: str, count: int) -> list[int]:
    """The first of request numbers 0 .. count-1 of ``mode`` on each photo: sending them embeds every photo."""
    return sorted({work.image_of(mode, i): i for i in reversed(range(count))}.values())


def embed_own_images(work: Workloads, mode: str, request, client, clients: int, per_client: int) -> None:
    """Embed the photos of ``clients`` clients of ``own_image_request(work, mode, per_client)`` before a timed
    load: each client's first request on each photo."""
    for k in range(clients):
        for j in first_per_photo(work, mode, per_client):
            request(client, k * per_client + j)


def cell(client, probes: Probes, request, concurrency: int, per_client: int, what: str = ""):
    """One load; returns (row, load, Triton statistics delta, phase seconds delta)."""
    log(
        f"  {client.protocol} concurrency {concurrency}: {concurrency * per_client} requests"
        + (f", {what}" if what else "")
    )
    before, phases_before = probes.stats.settled(), probes.phases.snapshot()
    load = run_load(client, request, concurrency, per_client)
    delta = probes.stats.since(before, len(load.latencies))
    batches = batch_sizes(delta)
    row = {
        "concurrency": concurrency,
        **latency_stats(load.latencies),
        "errors": len(load.errors),
        "first_error": load.errors[0] if load.errors else None,
        "throughput_rps": round(len(load.latencies) / load.wall_s, 3) if load.wall_s else 0.0,
        "detections_mean": round(float(np.mean(load.detections)), 2) if load.detections else 0.0,
        "sam3_batch": batches.get(ORCHESTRATOR),
        "vision_batch": batches.get("sam3_vision"),
        "cpu_busy": load.cpu_busy,
    }
    return row, load, delta, probes.phases.since(phases_before, len(load.latencies))
