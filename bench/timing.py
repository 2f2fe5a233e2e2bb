"""Timing: latency percentiles (ms) of latencies measured in seconds, timed calls, and the
concurrent load of one sweep cell (threads sharing one client, each with its own connection)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

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
    """Result of one sweep cell: latencies (s), wall time (s), errors (messages), detections per request, and
    ``cpu_busy``: the share of this machine's CPU time spent busy meanwhile (None without /proc/stat)."""

    latencies: list = field(default_factory=list)
    wall_s: float = 0.0
    errors: list = field(default_factory=list)
    detections: list = field(default_factory=list)
    cpu_busy: float | None = None


def cpu_times(stat: Path = Path("/proc/stat")) -> tuple[int, int] | None:
    """(busy, total) clock ticks of all this machine's CPUs since boot, from /proc/stat's ``cpu`` line: busy =
    user + nice + system + irq + softirq; total adds idle, iowait and steal (time the hypervisor gave to
    others). None where the file is missing (not Linux)."""
    try:
        user, nice, system, idle, iowait, irq, softirq, steal = map(int, stat.read_text().split()[1:9])
    except OSError:
        return None
    busy = user + nice + system + irq + softirq
    return busy, busy + idle + iowait + steal


def busy_share(before: tuple | None, after: tuple | None) -> float | None:
    """The busy share of the CPU time between two ``cpu_times`` readings (None if either is missing)."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return round((after[0] - before[0]) / (after[1] - before[1]), 3)


def run_load(client: Sam3Client, request, concurrency: int, per_client: int) -> Load:
    """``concurrency`` threads, each sending ``per_client`` requests request(client, i) back to back.

    Sam3Errors are counted in the Load; any other exception in a thread is raised here. ``Load.cpu_busy`` is
    this machine's, so it describes the server only where the server runs here (the load's own client
    threads count too).
    """
    load, lock, starts = Load(), threading.Lock(), []  # starts: (clock, cpu_times) when all threads are ready
    barrier = threading.Barrier(concurrency, action=lambda: starts.append((time.perf_counter(), cpu_times())))

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
    load.wall_s = time.perf_counter() - starts[0][0]
    load.cpu_busy = busy_share(starts[0][1], cpu_times())
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
