"""What the benchmark reads from the server besides responses: Triton's per-model inference
statistics (counts, cumulative ns), the orchestrator's phase seconds (Prometheus /metrics), and
from their deltas the requests per execution and the P5 overhead breakdown (ms per request)."""

from __future__ import annotations

import importlib
import json
import re
import time
import urllib.request
from dataclasses import dataclass

import numpy as np

from sam3_spec import COMPONENTS, ORCHESTRATOR

COMPONENT_MODELS = tuple(f"sam3_{c}" for c in COMPONENTS)
STAT_KINDS = ("success", "queue", "compute_input", "compute_infer", "compute_output")
COUNTS = ("inference_count", "execution_count")  # requests (batch items) and executions of a model


class TritonStats:
    """Reads Triton's per-model inference statistics and server facts over HTTP or gRPC.

    With ``metrics_url`` two numbers come from the orchestrator's own metrics on Triton's /metrics:
    - ``sam3``'s ``compute_infer`` (and the compute part of its ``success``): ``sam3_request_seconds_total``,
      each answered request's time from ``execute`` to its response sent. ``execute`` hands its batch on and
      returns (triton_repo/sam3/1/model.py), so Triton's own figure covers only the hand-off;
    - a component the orchestrator runs in its own process (``local_components``) has that compute added to
      its ``compute_infer`` (sam3_local_compute_seconds_total and sam3_local_calls_total): the same quantity,
      the inference time of the component's calls, whichever way they ran."""

    def __init__(self, address: str, protocol: str, metrics_url: str | None = None):
        module = importlib.import_module(f"tritonclient.{protocol}")
        self.client = module.InferenceServerClient(address)
        self.metrics_url = metrics_url

    def snapshot(self) -> dict:
        """{model: {kind: (count, ns)}} cumulative, for the sam3 model and its components."""
        raw = self.client.get_inference_statistics("", as_json=True)
        stats = {}
        for entry in raw.get("model_stats", []):
            infer = entry.get("inference_stats", {})
            stats[entry["name"]] = {
                k: (int(infer.get(k, {}).get("count", 0)), int(infer.get(k, {}).get("ns", 0))) for k in STAT_KINDS
            } | {k: (int(entry.get(k, 0)), 0) for k in COUNTS}
        served = self._served()
        for model, (calls, ns) in served.items():
            if model == ORCHESTRATOR and model in stats:
                kinds = stats[model]
                kinds["compute_infer"] = (calls, ns)
                kinds["success"] = (kinds["success"][0], kinds["queue"][1] + ns)
            elif model in stats:
                count, total = stats[model]["compute_infer"]
                stats[model]["compute_infer"] = (count + calls, total + ns)
        return stats

    def _served(self) -> dict:
        """{model: (calls, ns)} from the orchestrator's metrics: its answered requests, and the components run in
        its process ({} without a metrics URL)."""
        if not self.metrics_url:
            return {}
        text = metrics_text(self.metrics_url)
        seconds = counters(text, "sam3_local_compute_seconds_total", "model")
        calls = counters(text, "sam3_local_calls_total", "model")
        served = {m: (round(calls.get(m, 0)), round(seconds[m] * 1e9)) for m in seconds}
        requests = sum(counters(text, "sam3_requests_total", "mode").values())
        request_s = sum(counters(text, "sam3_request_seconds_total", "mode").values())
        return served | {ORCHESTRATOR: (round(requests), round(request_s * 1e9))}

    def settled(self, expected: int = 0, pause_s: float = 0.05, limit_s: float = 5.0) -> dict:
        """A snapshot taken once sam3's success count is ≥ ``expected`` and has stopped moving.

        Triton records a request's statistics just after it answers, so a snapshot taken right
        after a response can miss that request.
        """
        deadline, last = time.monotonic() + limit_s, self.snapshot()
        while time.monotonic() < deadline:
            time.sleep(pause_s)
            now = self.snapshot()
            if successes(now) == successes(last) >= expected and _local_calls(now) == _local_calls(last):
                return now
            last = now
        return last

    def since(self, before: dict, answered: int) -> dict:
        """The statistics delta from ``before`` to the settled snapshot that counts ``answered`` more
        successful sam3 requests (the requests sent in between)."""
        return stats_delta(before, self.settled(successes(before) + answered))

    def server_version(self) -> str:
        """The Triton server's version string ("unknown" when its metadata has none)."""
        return str(self.client.get_server_metadata(as_json=True).get("version", "unknown"))

    def dims(self) -> dict:
        """The served model's Dims (the sam3 config's ``dims`` parameter), {} if absent."""
        return self._parameter("dims")

    def local_components(self) -> list[str]:
        """The components the orchestrator runs in its own process (its ``local_components`` parameter)."""
        return sorted(self._parameter("local_components"))

    def _parameter(self, key: str) -> dict:
        """A JSON parameter of the sam3 config, {} if absent."""
        config = self.client.get_model_config(ORCHESTRATOR, as_json=True)
        config = config.get("config", config)
        text = config.get("parameters", {}).get(key, {}).get("string_value")
        return json.loads(text) if text else {}

    def close(self) -> None:
        """Close the statistics client's connection."""
        self.client.close()


def metrics_text(url: str) -> str:
    """Triton's Prometheus text at ``url`` (its /metrics)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def counters(text: str, name: str, label: str) -> dict[str, float]:
    """{label value: value} of the samples of the one-label metric ``name`` in Prometheus ``text``."""
    pattern = re.compile(rf'^{re.escape(name)}\{{{label}="(\w+)"\}}\s+([0-9.eE+-]+)$', re.MULTILINE)
    return {value: float(number) for value, number in pattern.findall(text)}


@dataclass(frozen=True)
class PhaseSnapshot:
    """The orchestrator's cumulative metrics: {phase: seconds summed over requests}, and the requests they
    cover (sam3_requests_total over every mode)."""

    seconds: dict
    requests: int


class PhaseMetrics:
    """The orchestrator's per-phase seconds (sam3_phase_seconds_total on Triton's /metrics)."""

    def __init__(self, url: str | None):
        self.url = url

    def snapshot(self) -> PhaseSnapshot:
        """The metrics now; empty without a metrics URL."""
        if not self.url:
            return PhaseSnapshot({}, 0)
        text = metrics_text(self.url)
        seconds = counters(text, "sam3_phase_seconds_total", "phase")
        return PhaseSnapshot(seconds, round(sum(counters(text, "sam3_requests_total", "mode").values())))

    def since(self, before: PhaseSnapshot, answered: int, pause_s: float = 0.02, limit_s: float = 5.0) -> dict:
        """{phase: seconds} from ``before`` to the snapshot that counts ``answered`` more requests. The
        orchestrator publishes its metrics from a thread just after it answers, so a snapshot taken right
        after the last response can miss them; this waits for them (at most ``limit_s``)."""
        deadline, now = time.monotonic() + limit_s, self.snapshot()
        while self.url and now.requests < before.requests + answered and time.monotonic() < deadline:
            time.sleep(pause_s)
            now = self.snapshot()
        return {phase: now.seconds[phase] - before.seconds.get(phase, 0.0) for phase in now.seconds}


def _local_calls(snapshot: dict) -> int:
    """Calls counted in sam3's and the components' compute_infer (moves while the orchestrator's metrics
    catch up)."""
    models = (ORCHESTRATOR, *COMPONENT_MODELS)
    return sum(kinds["compute_infer"][0] for model, kinds in snapshot.items() if model in models)


def successes(snapshot: dict) -> int:
    """Requests the sam3 model has answered successfully, in a TritonStats snapshot."""
    return snapshot.get(ORCHESTRATOR, {}).get("success", (0, 0))[0]


def stats_delta(before: dict, after: dict) -> dict:
    """{model: {kind: (count, ns)}} accumulated between two snapshots."""
    return {
        model: {
            k: (
                after[model][k][0] - before.get(model, {}).get(k, (0, 0))[0],
                after[model][k][1] - before.get(model, {}).get(k, (0, 0))[1],
            )
            for k in STAT_KINDS + COUNTS
        }
        for model in after
    }


def batch_sizes(delta: dict) -> dict:
    """{model: mean requests per execution} between two snapshots (> 1: Triton batched them)."""
    sizes = {}
    for model, kinds in delta.items():
        inferences, executions = kinds["inference_count"][0], kinds["execution_count"][0]
        if executions:
            sizes[model] = round(inferences / executions, 2)
    return sizes


def overhead(delta: dict, latencies, phases: dict | None = None) -> dict:
    """Per sam3 request (ms): client end-to-end, Triton's request time, orchestrator compute, component
    compute (by model), and the overhead = end-to-end − component compute (also as a fraction),
    broken down (``breakdown``) into queue (Triton), decode, BLS (the orchestrator's wait on its
    component calls beyond their compute: tensor copies and IPC), post-processing, encoding and
    the rest (transport, parsing, glue), from the orchestrator's phase metrics.

    Component calls that ran at the same time (several instances of a component, e.g. auto mode's
    prompt calls on two ``sam3_prompt`` instances) add up to more compute than the orchestrator's own
    time (``overlapped``). Then the compute on the request's path is the orchestrator's wait on its
    calls (its "compute" phase), so the overhead no longer holds the BLS copies made during that wait."""
    count = delta.get(ORCHESTRATOR, {}).get("success", (0, 0))[0]
    if not count or not len(latencies):
        return {"requests": 0}
    per = lambda ns: round(ns / count / 1e6, 3)  # noqa: E731 - ns per request → ms
    components = {m: per(delta[m]["compute_infer"][1]) for m in COMPONENT_MODELS if m in delta}
    e2e, orchestrator = float(np.mean(latencies)) * 1e3, per(delta[ORCHESTRATOR]["compute_infer"][1])
    compute = sum(components.values())
    overlapped = compute > orchestrator
    waited = (phases or {}).get("compute", 0.0) / count * 1e3
    critical = min(compute, waited) if overlapped and waited else compute
    row = {
        "requests": int(count),
        "consistent": int(count) == len(latencies),
        "end_to_end_ms": round(e2e, 3),
        "server_request_ms": per(delta[ORCHESTRATOR]["success"][1]),
        "orchestrator_compute_ms": orchestrator,
        "components_compute_ms": round(compute, 3),
        "components_ms": components,
        "overlapped": overlapped,
        "critical_compute_ms": round(critical, 3),
        "orchestrator_overhead_ms": round(orchestrator - critical, 3),
        "transport_ms": round(e2e - per(delta[ORCHESTRATOR]["success"][1]), 3),
        "overhead_ms": round(e2e - critical, 3),
        "overhead_fraction": round((e2e - critical) / e2e, 4),
    }
    if phases:
        row["breakdown"] = _breakdown(row, phases, count, per(delta[ORCHESTRATOR]["queue"][1]))
        row["floor"] = _floor(row["overhead_ms"], row["breakdown"])
    return row


def _floor(overhead_ms: float, parts: dict) -> dict | None:
    """The overhead as a multiple of the BLS copies (the Python backend's tensor copies between stages, the
    floor P5 measures against), with and without the image decode; None where no copy time was measured."""
    if parts["bls"] <= 0:
        return None
    return {
        "bls_ms": parts["bls"],
        "overhead_x": round(overhead_ms / parts["bls"], 2),
        "without_decode_x": round((overhead_ms - parts["decode"]) / parts["bls"], 2),
    }


def _breakdown(row: dict, phases: dict, count: int, queue_ms: float) -> dict:
    """The overhead of ``row`` split by phase (ms per request); ``rest`` closes the sum."""
    ms = {phase: round(seconds / count * 1e3, 3) for phase, seconds in phases.items()}
    parts = {
        "queue": queue_ms,
        "decode": ms.get("decode", 0.0),
        "bls": round(ms.get("compute", 0.0) - row["critical_compute_ms"], 3),
        "post": ms.get("post", 0.0),
        "encode": ms.get("encode", 0.0),
    }
    return parts | {"rest": round(row["overhead_ms"] - sum(parts.values()), 3)}


@dataclass
class Probes:
    """What the benchmark reads from the server besides responses: Triton statistics, phase metrics."""

    stats: TritonStats
    phases: PhaseMetrics
