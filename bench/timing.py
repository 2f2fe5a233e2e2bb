"""Timing: latency percentiles (ms) of latencies measured in seconds, timed calls, and the
concurrent load of one sweep cell (threads sharing one client, each with its own connection)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from client.api import Sam3Client, Sam3Error


def latency_stats(seconds) -> dict:
    """count, p50/p90/p99/mean/min/max in ms of a list of latencies in seconds."""
    ms = np.asarray(seconds, np.float64) * 1e3
    if not len(ms):
        return {"count": 0}
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {
        "count": int(len(ms)),
        "p50_ms": round(float(p50), 3),
        "p90_ms": round(float(p90), 3),
        "p99_ms": round(float(p99), 3),
        "mean_ms": round(float(ms.mean()), 3),
        "min_ms": round(float(ms.min()), 3),
        "max_ms": round(float(ms.max()), 3),
    }


def timed(fn, *args, **kwargs):
    """(seconds, result) of one call."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def repeat_timed(fn, count: int) -> list[float]:
    """Seconds of ``count`` calls fn(i)."""
    return [timed(fn, i)[0] for i in range(count)]


@dataclass
class Load:
    """Result of one sweep cell: latencies (s), wall time (s), errors (messages), detections per request."""

    latencies: list = field(default_factory=list)
    wall_s: float = 0.0
    errors: list = field(default_factory=list)
    detections: list = field(default_factory=list)


def run_load(client: Sam3Client, request, concurrency: int, per_client: int) -> Load:
    """``concurrency`` threads, each sending ``per_client`` requests request(client, i) back to back.

    Sam3Errors are counted in the Load; any other exception in a thread is raised here.
    """
    load, lock, starts = Load(), threading.Lock(), []
    barrier = threading.Barrier(concurrency, action=lambda: starts.append(time.perf_counter()))

    def worker(k: int) -> None:
        try:
            client.is_ready()  # opens this thread's connection before the clock starts
            barrier.wait()
        except BaseException:
            barrier.abort()  # the other threads stop waiting (BrokenBarrierError)
            raise
        for j in range(per_client):
            _one(load, lock, request, client, k * per_client + j)

    with ThreadPoolExecutor(concurrency) as pool:
        futures = [pool.submit(worker, k) for k in range(concurrency)]
    _raise_first([f.exception() for f in futures])
    load.wall_s = time.perf_counter() - starts[0]
    return load


def _raise_first(errors: list) -> None:
    """Raise the first real failure of the worker threads (a broken barrier is only a consequence)."""
    real = [e for e in errors if e is not None and not isinstance(e, threading.BrokenBarrierError)]
    if real or any(errors):
        raise (real or [e for e in errors if e is not None])[0]


def _one(load: Load, lock, request, client, i: int) -> None:
    """One timed request; a Sam3Error is recorded in ``load.errors`` (reported, never hidden)."""
    start = time.perf_counter()
    try:
        seg = request(client, i)
    except Sam3Error as err:
        with lock:
            load.errors.append(f"{err.status}: {err.message}")
        return
    elapsed = time.perf_counter() - start
    with lock:
        load.latencies.append(elapsed)
        load.detections.append(len(seg))
