"""The orchestrator's custom Prometheus metrics on Triton's /metrics, published off the response path.

Each ``Metric.increment`` of the Python backend is a round trip to the Triton process (the stub sends a
message and waits for the server to apply it), several per batch: py-spy put about 15 % of the event-loop
thread's busy time under embedded clicks there.
``execute`` therefore only sums one batch's amounts (``Sam3Metrics.observe``, microseconds) and hands
them to one publisher thread, which makes the increments after the responses have gone. One thread
owns every ``Metric`` object: the backend serializes the messages, but a ``Metric`` keeps the value
being sent in the object itself, so two threads must not increment the same one at once.

Consequence for readers: a response can arrive a few milliseconds before its metrics. The benchmark waits
until ``sam3_requests_total`` has counted the requests it sent (bench/stats.py ``PhaseMetrics.since``), the
tests until two reads of /metrics agree (tests/test_server.py ``settled_metrics``).
"""

from __future__ import annotations

import queue
import sys
import threading
from collections import Counter

FAMILIES = {  # attribute: (metric name, help text)
    "hits": ("sam3_cache_hits_total", "sam3 cache hits"),
    "misses": ("sam3_cache_misses_total", "sam3 cache misses"),
    "latency": ("sam3_request_seconds_total", "sam3 seconds per mode, from execute to the response handed over"),
    "count": ("sam3_requests_total", "sam3 successful requests per mode"),
    "phases": ("sam3_phase_seconds_total", "sam3 per-request seconds per phase"),
    "local_seconds": ("sam3_local_compute_seconds_total", "inference seconds of components run in the sam3 process"),
    "local_calls": ("sam3_local_calls_total", "calls of components run in the sam3 process"),
}


class Sam3Metrics:
    """Cache hits/misses, requests and seconds per mode, seconds per phase (decode, compute, post,
    encode) summed over requests, as Prometheus counters. ``pb_utils``: triton_python_backend_utils."""

    def __init__(self, pb_utils):
        counter = pb_utils.MetricFamily.COUNTER
        self.families = {key: pb_utils.MetricFamily(name, text, counter) for key, (name, text) in FAMILIES.items()}
        self._metrics, self._totals = {}, {}
        self._pending = queue.SimpleQueue()  # Counters {(family key, label, value): amount}; None stops
        self._publisher = threading.Thread(target=self._publish_forever, name="sam3-metrics", daemon=True)
        self._publisher.start()

    def observe(self, answered: list, image_cache, text_cache, stages=None) -> None:
        """Queue one execute's answered requests ([(mode, Timings)]), the caches' new hits and misses and, for
        ``stages`` with in-process components (stages.LocalStages), their new inference seconds and calls by
        model name: one increment per metric and label, zeros not at all."""
        sums = Counter()  # (family key, label, value): amount
        for mode, timings in answered:
            sums["latency", "mode", mode] += timings.wall
            sums["count", "mode", mode] += 1
            for phase, seconds in timings.seconds.items():
                sums["phases", "phase", phase] += seconds
        for name, cache in (("image", image_cache), ("text", text_cache)):
            sums["hits", "cache", name] += self._delta(("hits", name), cache.hits)
            sums["misses", "cache", name] += self._delta(("misses", name), cache.misses)
        for model, seconds in getattr(stages, "seconds", {}).items():
            sums["local_seconds", "model", model] += self._delta(("local_seconds", model), seconds)
        for model, calls in getattr(stages, "calls", {}).items():
            sums["local_calls", "model", model] += self._delta(("local_calls", model), calls)
        if updates := Counter({key: amount for key, amount in sums.items() if amount}):
            self._pending.put(updates)

    def close(self, timeout_s: float = 2.0) -> None:
        """Publish what is queued, then stop the publisher (waits at most ``timeout_s``)."""
        self._pending.put(None)
        self._publisher.join(timeout_s)

    def _delta(self, key: tuple, total: float) -> float:
        """The change of a cumulative counter (a cache's hits or misses, an in-process head's seconds or calls)
        since the last batch."""
        change = total - self._totals.get(key, 0)
        self._totals[key] = total
        return change

    def _publish_forever(self) -> None:
        """Publish queued updates until ``close``. What queued up while the last ones went out is summed
        first, so under load several batches cost one increment per metric and label."""
        while True:
            queued = [self._pending.get()]
            while not self._pending.empty():
                queued.append(self._pending.get_nowait())
            total = Counter()
            for updates in queued:
                total.update(updates or {})
            self._increment(total)
            if None in queued:
                return

    def _increment(self, total: Counter) -> None:
        for (key, label, value), amount in total.items():
            try:
                self._metric(key, label, value).increment(amount)
            except Exception as err:  # noqa: BLE001 - one metric lost must not stop the others; said in the log
                print(
                    f"sam3: {FAMILIES[key][0]}{{{label}={value!r}}} not published ({type(err).__name__}: {err})",
                    file=sys.stderr,
                    flush=True,
                )

    def _metric(self, key: str, label: str, value: str):
        if (key, label, value) not in self._metrics:
            self._metrics[key, label, value] = self.families[key].Metric(labels={label: value})
        return self._metrics[key, label, value]
