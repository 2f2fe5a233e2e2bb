"""Benchmark CLI: latency percentiles and throughput of the SAM3 Triton service, and the
performance goals P1–P5 measured against transformers' eager pipeline (the reference).

    python -m bench --model bench                      # start a server, benchmark it
    python -m bench --grpc-url 127.0.0.1:8001 --http-url 127.0.0.1:8000 --checkpoint DIR
    sam3-bench --model tiny --quick                    # smoke run

Sweep: per protocol (gRPC, HTTP) × mode (text, point, box, auto) × concurrency (threads, each
with its own connection, each sending ``--repeats`` requests) after ``--warmup`` requests:
p50/p90/p99 latency (ms) and throughput (requests/s). Goals (one run, same weights and inputs):

    P1  text mode: our server vs the reference (median latency ratio)
    P2  ten clicks on one image: embedding cache vs ten full recomputes (reference; server with the
        cache defeated by a distinct image_id per click)
    P3  four concepts in one request vs four separate requests (our server)
    P4  mask bytes on the wire: COCO RLE vs the seeds' nested-boolean JSON
    P5  server overhead: client end-to-end latency minus the component models' compute time
        (Triton inference statistics)

Ratios are "baseline / ours": > 1 means ours is faster (or smaller). The report (table on stdout,
JSON in ``--json``) echoes the configuration: model, dims, images, versions, machine. Progress
goes to stderr. Inputs are real photos from scikit-image: astronaut (person), coffee (cup).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from client.api import Sam3Client, Sam3Error
from sam3_spec import COMPONENTS, MODES, ORCHESTRATOR

PROTOCOLS = ("grpc", "http")
COMPONENT_MODELS = tuple(f"sam3_{c}" for c in COMPONENTS)
TEXT_WORKLOADS = (("astronaut", ("person",)), ("coffee", ("cup",)))
P3_WORKLOAD = ("astronaut", ("person", "helmet", "flag", "spacesuit"))
BOX = (120.0, 20.0, 460.0, 500.0)  # around the astronaut, x0 y0 x1 y1 px
QUICK = dict(
    warmup=1, repeats=2, concurrency="1,2", compare_repeats=2, clicks=3, points_per_side=4, throughput_concurrency=2
)


def log(message: str) -> None:
    """Progress line on stderr."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- command line


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="sam3-bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    target = p.add_argument_group("target: a running server (--grpc-url/--http-url) or one started here (--model)")
    target.add_argument("--grpc-url", help="host:port of a running server's gRPC endpoint")
    target.add_argument("--http-url", help="host:port of a running server's HTTP endpoint")
    target.add_argument(
        "--metrics-url",
        help="a running server's Prometheus endpoint (http://host:8002/metrics), for the P5 phase breakdown",
    )
    target.add_argument("--model", help="tiny | bench | checkpoint dir: export if needed and start a server")
    target.add_argument("--artifacts", type=Path, help="exported artifacts of --model (default: its cache dir)")
    target.add_argument(
        "--checkpoint",
        type=Path,
        help="checkpoint dir of the served weights, for the reference "
        "(default with --model: the one the artifacts came from)",
    )
    target.add_argument("--image-cache-mb", type=int, default=1024, help="server image cache with --model")
    p.add_argument("--no-reference", action="store_true", help="skip the transformers reference (P1, P2 lines)")
    p.add_argument("--protocols", default="grpc,http", help="comma list of grpc,http")
    p.add_argument("--modes", default=",".join(MODES), help="comma list of " + ",".join(MODES))
    p.add_argument("--concurrency", default="1,2,4", help="comma list of concurrent clients")
    p.add_argument("--warmup", type=int, default=3, help="warm-up requests per protocol and mode")
    p.add_argument("--repeats", type=int, default=10, help="requests per client in each sweep cell")
    p.add_argument("--compare-repeats", type=int, default=5, help="repetitions of each P1-P3 measurement")
    p.add_argument("--clicks", type=int, default=10, help="clicks per image in P2")
    p.add_argument(
        "--throughput-concurrency", type=int, default=8, help="concurrent clients of the throughput comparison (vs 1)"
    )
    p.add_argument(
        "--cache",
        choices=("cold", "warm"),
        default="cold",
        help="sweep: cold = a new image_id per request (vision runs every time); warm = one id per image",
    )
    p.add_argument("--threshold", default="auto", help="text score threshold, or 'auto': keep --keep best per concept")
    p.add_argument("--keep", type=int, default=3, help="detections per concept that --threshold auto keeps")
    p.add_argument("--points-per-side", type=int, default=16, help="auto mode grid")
    p.add_argument("--pred-iou-thresh", type=float, default=0.0, help="auto mode filter (0 keeps every mask)")
    p.add_argument("--stability-thresh", type=float, default=0.0, help="auto mode filter (0 keeps every mask)")
    p.add_argument("--timeout", type=float, default=600.0, help="client timeout per request, s")
    p.add_argument("--json", type=Path, default=Path("sam3-bench.json"), help="where to write the JSON report")
    p.add_argument("--quick", action="store_true", help="smoke run: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    return _check_args(p, p.parse_args(argv))


def _check_args(parser, args) -> argparse.Namespace:
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    if not args.model and not (args.grpc_url or args.http_url):
        parser.error("give a running server (--grpc-url and/or --http-url) or --model to start one")
    if args.model and (args.grpc_url or args.http_url):
        parser.error("--model starts its own server: leave out --grpc-url/--http-url")
    args.protocols = _choices(parser, "--protocols", args.protocols, PROTOCOLS)
    args.modes = _choices(parser, "--modes", args.modes, MODES)
    try:
        args.concurrency = sorted({int(c) for c in args.concurrency.split(",") if c.strip()})
    except ValueError:
        parser.error(f"--concurrency must be a comma list of integers; got {args.concurrency!r}")
    if (
        not args.concurrency
        or min(args.concurrency) < 1
        or min(args.warmup, args.repeats - 1, args.compare_repeats - 1, args.clicks - 1, args.keep - 1) < 0
    ):
        parser.error("--concurrency, --repeats, --compare-repeats, --clicks and --keep must be ≥ 1, --warmup ≥ 0")
    if args.threshold != "auto":
        args.threshold = _threshold(parser, args.threshold)
    return args


def _choices(parser, flag: str, text: str, allowed: tuple) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in items if t not in allowed]
    if unknown or not items:
        parser.error(f"{flag}: unknown {unknown}; choose from {', '.join(allowed)}")
    return items


def _threshold(parser, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        parser.error(f"--threshold must be 'auto' or a number in [0, 1]; got {text!r}")
    if not 0.0 <= value <= 1.0:
        parser.error(f"--threshold must be in [0, 1]; got {value}")
    return value


# ---------------------------------------------------------------- inputs


@dataclass(frozen=True)
class BenchImage:
    """A benchmark photo: name, encoded bytes (PNG or JPEG) and (height, width) px."""

    name: str
    data: bytes
    shape: tuple[int, int]
    format: str


def load_images() -> dict[str, BenchImage]:
    """astronaut (512×512 PNG, a person) and coffee (400×600 JPEG, a cup) from scikit-image."""
    from skimage import data

    return {
        "astronaut": _encoded("astronaut", data.astronaut(), "PNG"),
        "coffee": _encoded("coffee", data.coffee(), "JPEG"),
    }


def _encoded(name: str, pixels: np.ndarray, fmt: str) -> BenchImage:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return BenchImage(name, buf.getvalue(), tuple(pixels.shape[:2]), fmt)


def click_points(count: int) -> list[list[float]]:
    """``count`` distinct clicks on the astronaut (x, y px), spread over the person."""
    xs = np.linspace(200.0, 330.0, 5)
    ys = np.linspace(120.0, 460.0, max(1, -(-count // 5)))
    return [[float(x), float(y)] for y in ys for x in xs][:count]


def fresh_id(name: str) -> str:
    """An image_id the server has never seen: its embedding cache misses."""
    return f"{name}-{uuid.uuid4().hex}"


# ---------------------------------------------------------------- requests


@dataclass
class Workloads:
    """The requests of every mode on the benchmark photos; ``thresholds``: text threshold per workload."""

    images: dict[str, BenchImage]
    thresholds: dict[str, float]
    points_per_side: int
    pred_iou_thresh: float
    stability_thresh: float
    clicks: list = field(default_factory=list)

    def call(self, client: Sam3Client, mode: str, i: int, image_id: str | None):
        """Request number ``i`` of ``mode`` (text alternates astronaut/person and coffee/cup)."""
        if mode == "text":
            name, concepts = TEXT_WORKLOADS[i % len(TEXT_WORKLOADS)]
            return self.text(client, name, concepts, image_id)
        astronaut = self.images["astronaut"].data
        if mode == "point":
            return client.points(astronaut, [self.clicks[i % len(self.clicks)]], [1], image_id=image_id)
        if mode == "box":
            return client.boxes(astronaut, [list(BOX)], image_id=image_id)
        return client.auto(
            self.images["coffee"].data,
            points_per_side=self.points_per_side,
            pred_iou_thresh=self.pred_iou_thresh,
            stability_score_thresh=self.stability_thresh,
            image_id=image_id,
        )

    def text(self, client: Sam3Client, name: str, concepts, image_id: str | None):
        key = workload_key(name, concepts)
        return client.text(self.images[name].data, list(concepts), threshold=self.thresholds[key], image_id=image_id)

    def image_of(self, mode: str, i: int) -> str:
        """Name of the photo request ``i`` of ``mode`` uses (for cache keys)."""
        if mode == "text":
            return TEXT_WORKLOADS[i % len(TEXT_WORKLOADS)][0]
        return "coffee" if mode == "auto" else "astronaut"


def workload_key(name: str, concepts) -> str:
    return f"{name}:{'+'.join(concepts)}"


def calibrate_threshold(client: Sam3Client, image: BenchImage, concepts, keep: int) -> float:
    """A threshold that keeps about ``keep`` detections per concept: midway between the
    (keep·n)-th and the next best score of the server's answer at threshold 0."""
    seg = client.text(image.data, list(concepts), threshold=0.0, image_id=fresh_id(image.name))
    scores = np.sort(seg.scores)[::-1]
    n = keep * len(concepts)
    if len(scores) <= n:
        return 0.0
    return float((scores[n - 1] + scores[n]) / 2)


def thresholds_for(client: Sam3Client, images, args) -> dict[str, float]:
    """{workload key: threshold} for the text workloads and P3 (fixed, or calibrated with --threshold auto)."""
    workloads = list(TEXT_WORKLOADS) + [P3_WORKLOAD]
    if args.threshold != "auto":
        return {workload_key(n, c): float(args.threshold) for n, c in workloads}
    return {workload_key(n, c): calibrate_threshold(client, images[n], c, args.keep) for n, c in workloads}


# ---------------------------------------------------------------- timing


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


# ---------------------------------------------------------------- Triton statistics (P5)

STAT_KINDS = ("success", "queue", "compute_input", "compute_infer", "compute_output")
COUNTS = ("inference_count", "execution_count")  # requests (batch items) and executions of a model


class TritonStats:
    """Reads Triton's per-model inference statistics and server facts over HTTP or gRPC."""

    def __init__(self, address: str, protocol: str):
        import importlib

        module = importlib.import_module(f"tritonclient.{protocol}")
        self.client = module.InferenceServerClient(address)

    def snapshot(self) -> dict:
        """{model: {kind: (count, ns)}} cumulative, for the sam3 model and its components."""
        raw = self.client.get_inference_statistics("", as_json=True)
        stats = {}
        for entry in raw.get("model_stats", []):
            infer = entry.get("inference_stats", {})
            stats[entry["name"]] = {
                k: (int(infer.get(k, {}).get("count", 0)), int(infer.get(k, {}).get("ns", 0))) for k in STAT_KINDS
            } | {k: (int(entry.get(k, 0)), 0) for k in COUNTS}
        return stats

    def settled(self, expected: int = 0, pause_s: float = 0.05, limit_s: float = 5.0) -> dict:
        """A snapshot taken once sam3's success count is ≥ ``expected`` and has stopped moving.

        Triton records a request's statistics just after it answers, so a snapshot taken right
        after a response can miss that request.
        """
        deadline, last = time.monotonic() + limit_s, self.snapshot()
        while time.monotonic() < deadline:
            time.sleep(pause_s)
            now = self.snapshot()
            if _successes(now) == _successes(last) >= expected:
                return now
            last = now
        return last

    def server_version(self) -> str:
        return str(self.client.get_server_metadata(as_json=True).get("version", "unknown"))

    def dims(self) -> dict:
        """The served model's Dims (the sam3 config's ``dims`` parameter), {} if absent."""
        config = self.client.get_model_config(ORCHESTRATOR, as_json=True)
        config = config.get("config", config)
        text = config.get("parameters", {}).get("dims", {}).get("string_value")
        return json.loads(text) if text else {}

    def close(self) -> None:
        self.client.close()


PHASE_METRIC = re.compile(r'^sam3_phase_seconds_total\{phase="(\w+)"\}\s+([0-9.eE+-]+)$', re.MULTILINE)


class PhaseMetrics:
    """The orchestrator's per-phase seconds (sam3_phase_seconds_total on Triton's /metrics)."""

    def __init__(self, url: str | None):
        self.url = url

    def snapshot(self) -> dict:
        """{phase: seconds summed over requests}; {} without a metrics URL."""
        if not self.url:
            return {}
        import urllib.request

        with urllib.request.urlopen(self.url, timeout=10) as response:
            text = response.read().decode()
        return {phase: float(value) for phase, value in PHASE_METRIC.findall(text)}


def phases_delta(before: dict, after: dict) -> dict:
    return {phase: after[phase] - before.get(phase, 0.0) for phase in after}


def _successes(snapshot: dict) -> int:
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
    the rest (transport, parsing, glue), from the orchestrator's phase metrics."""
    count = delta.get(ORCHESTRATOR, {}).get("success", (0, 0))[0]
    if not count or not len(latencies):
        return {"requests": 0}
    per = lambda ns: round(ns / count / 1e6, 3)  # noqa: E731 - ns per request → ms
    components = {m: per(delta[m]["compute_infer"][1]) for m in COMPONENT_MODELS if m in delta}
    e2e = float(np.mean(latencies)) * 1e3
    compute = sum(components.values())
    row = {
        "requests": int(count),
        "consistent": int(count) == len(latencies),
        "end_to_end_ms": round(e2e, 3),
        "server_request_ms": per(delta[ORCHESTRATOR]["success"][1]),
        "orchestrator_compute_ms": per(delta[ORCHESTRATOR]["compute_infer"][1]),
        "components_compute_ms": round(compute, 3),
        "components_ms": components,
        "orchestrator_overhead_ms": round(per(delta[ORCHESTRATOR]["compute_infer"][1]) - compute, 3),
        "transport_ms": round(e2e - per(delta[ORCHESTRATOR]["success"][1]), 3),
        "overhead_ms": round(e2e - compute, 3),
        "overhead_fraction": round((e2e - compute) / e2e, 4),
    }
    if phases:
        row["breakdown"] = _breakdown(row, phases, count, per(delta[ORCHESTRATOR]["queue"][1]))
    return row


def _breakdown(row: dict, phases: dict, count: int, queue_ms: float) -> dict:
    """The overhead of ``row`` split by phase (ms per request); ``rest`` closes the sum."""
    ms = {phase: round(seconds / count * 1e3, 3) for phase, seconds in phases.items()}
    parts = {
        "queue": queue_ms,
        "decode": ms.get("decode", 0.0),
        "bls": round(ms.get("compute", 0.0) - row["components_compute_ms"], 3),
        "post": ms.get("post", 0.0),
        "encode": ms.get("encode", 0.0),
    }
    return parts | {"rest": round(row["overhead_ms"] - sum(parts.values()), 3)}


# ---------------------------------------------------------------- the target server


@dataclass
class Target:
    """Where the benchmark sends requests: {protocol: address}, the served checkpoint (dir or HF id;
    None: unknown), model name."""

    urls: dict
    checkpoint: Path | str | None
    model: str
    metrics_url: str | None = None
    precision: dict | None = None  # the served repository's precision.json (runtime, per-component precision)


@contextmanager
def open_target(args):
    """The running server named by --grpc-url/--http-url, or a server started here for --model."""
    if not args.model:
        urls = {p: u for p, u in (("grpc", args.grpc_url), ("http", args.http_url)) if u}
        name = str(args.checkpoint) if args.checkpoint else "unknown (a running server)"
        yield Target(urls, args.checkpoint, name, args.metrics_url)
        return
    from server.triton import TritonServer

    with tempfile.TemporaryDirectory(prefix="sam3-bench-") as tmp:
        repo = _build_repo(args, Path(tmp) / "repository-cpu")
        log(f"starting tritonserver over {repo}")
        with TritonServer(repo, log_path=Path(tmp) / "tritonserver.log", ready_timeout_s=600) as server:
            log(f"server ready: gRPC {server.grpc_url}, HTTP {server.http_address}")
            yield Target(
                {"grpc": server.grpc_url, "http": server.http_address},
                _model_checkpoint(args),
                args.model,
                server.metrics_url,
                _served_precision(repo),
            )


def _artifacts(args) -> Path:
    from server.artifacts import artifacts_dir

    return Path(args.artifacts) if args.artifacts else artifacts_dir(args.model)


def _served_precision(repo: Path) -> dict:
    from export.repository import read_precisions

    return read_precisions(repo)


def _build_repo(args, out: Path) -> Path:
    """Artifacts (exported if missing) → a cpu model repository, as ``sam3-triton serve`` does."""
    from export.repository import build_repository
    from server.artifacts import ensure_artifacts

    artifacts = _artifacts(args)
    log(f"artifacts of {args.model} in {artifacts} (exported now if missing)")
    ensure_artifacts(args.model, artifacts)
    return build_repository(artifacts, out, "cpu", orchestrator_params={"image_cache_mb": args.image_cache_mb})


def _model_checkpoint(args) -> Path | str:
    """--checkpoint, else what the --model artifacts came from: a built-in's dir beside them, the
    checkpoint dir, or the Hugging Face id."""
    if args.checkpoint:
        return Path(args.checkpoint)
    from export.checkpoint import BUILTIN

    if args.model in BUILTIN:
        return _artifacts(args) / f"{args.model}-checkpoint"
    path = Path(args.model).expanduser()
    return path if path.is_dir() else args.model


# ---------------------------------------------------------------- the sweep


@dataclass
class Probes:
    """What the benchmark reads from the server besides responses: Triton statistics, phase metrics."""

    stats: TritonStats
    phases: PhaseMetrics


def sweep(clients: dict, probes: Probes, work: Workloads, args) -> tuple[list, list]:
    """Warm-up, then every protocol × mode × concurrency cell; returns (rows, P5 rows)."""
    rows, p5 = [], []
    for protocol, client in clients.items():
        for mode in args.modes:
            request = _sweep_request(work, mode, args.cache)
            log(f"warm-up {protocol} {mode}: {args.warmup} request(s)")
            for i in range(args.warmup):
                request(client, i)
            for concurrency in args.concurrency:
                row, load, delta, phases = _cell(client, probes, request, concurrency, args.repeats)
                rows.append({"protocol": protocol, "mode": mode, **row})
                if concurrency == args.concurrency[0]:
                    p5.append(
                        {
                            "protocol": protocol,
                            "mode": mode,
                            "concurrency": concurrency,
                            **overhead(delta, load.latencies, phases),
                        }
                    )
    return rows, p5


def _sweep_request(work: Workloads, mode: str, cache: str):
    """request(client, i) for one sweep cell; cold: a fresh image_id per request, warm: one per photo."""

    def request(client, i):
        name = work.image_of(mode, i)
        return work.call(client, mode, i, fresh_id(name) if cache == "cold" else f"bench-{name}")

    return request


def _cell(client, probes: Probes, request, concurrency: int, per_client: int):
    """One load; returns (row, load, Triton statistics delta, phase seconds delta)."""
    log(f"  {client.protocol} concurrency {concurrency}: {concurrency * per_client} requests")
    before, phases_before = probes.stats.settled(), probes.phases.snapshot()
    load = run_load(client, request, concurrency, per_client)
    delta = stats_delta(before, probes.stats.settled(_successes(before) + len(load.latencies)))
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
    }
    return row, load, delta, phases_delta(phases_before, probes.phases.snapshot())


def throughput(client, probes: Probes, work: Workloads, args) -> dict:
    """Point requests at concurrency 1 vs ``--throughput-concurrency``: cold (a new image_id each: the
    vision model runs, and batches) and warm (clicks on one embedded image: orchestrator-bound)."""
    high, cases = args.throughput_concurrency, {}
    for cache in ("cold", "warm"):
        request = _sweep_request(work, "point", cache)
        request(client, 0)
        log(f"throughput: point, {cache} image, concurrency 1 vs {high}")
        rows = {c: _cell(client, probes, request, c, args.repeats * max(1, high // c))[0] for c in (1, high)}
        cases[cache] = {
            "concurrency": [1, high],
            "rps": [rows[1]["throughput_rps"], rows[high]["throughput_rps"]],
            "gain": ratio(rows[high]["throughput_rps"], rows[1]["throughput_rps"]),
            "vision_batch": [rows[1]["vision_batch"], rows[high]["vision_batch"]],
            "sam3_batch": [rows[1]["sam3_batch"], rows[high]["sam3_batch"]],
            "errors": rows[1]["errors"] + rows[high]["errors"],
        }
    return cases


# ---------------------------------------------------------------- the goals P1-P4


def ratio(baseline, ours) -> float | None:
    """baseline / ours (> 1: ours is faster or smaller); None when either is missing or zero."""
    if not baseline or not ours:
        return None
    return round(float(baseline) / float(ours), 3)


def p1_text(client, work: Workloads, reference, repeats: int) -> dict:
    """Text mode, one concept per request, alternating the two photos: server (cold and warm
    image cache) vs the reference; also the detection counts of both (they should agree)."""
    log(f"P1 text: server cold/warm and reference, {2 * repeats} requests each")
    cold = repeat_timed(lambda i: work.call(client, "text", i, fresh_id(work.image_of("text", i))), 2 * repeats)
    warm = repeat_timed(lambda i: work.call(client, "text", i, f"p1-{work.image_of('text', i)}"), 2 * repeats)
    result = {
        "server_cold": latency_stats(cold),
        "server_warm": latency_stats(warm),
        "workloads": [workload_key(n, c) for n, c in TEXT_WORKLOADS],
        "detections": _p1_detections(client, work, reference),
    }
    if reference is None:
        return {**result, "reference": None, "speedup": None, "speedup_warm": None}
    ref = repeat_timed(lambda i: _reference_text(reference, work, i), 2 * repeats)
    return {
        **result,
        "reference": latency_stats(ref),
        "speedup": ratio(np.median(ref), np.median(cold)),
        "speedup_warm": ratio(np.median(ref), np.median(warm)),
    }


def p1_box(client, work: Workloads, reference, repeats: int) -> dict:
    """Box mode on a never-seen image (a new image_id each time) vs the reference's box request."""
    log(f"P1 box: server cold and reference, {repeats} requests each")
    image = work.images["astronaut"].data
    cold = repeat_timed(lambda i: work.call(client, "box", i, fresh_id("astronaut")), repeats)
    result = {"server_cold": latency_stats(cold)}
    if reference is None:
        return {**result, "reference": None, "speedup": None}
    ref = repeat_timed(lambda _: reference.box(image, list(BOX)), repeats)
    return {**result, "reference": latency_stats(ref), "speedup": ratio(np.median(ref), np.median(cold))}


def _reference_text(reference, work: Workloads, i: int):
    name, concepts = TEXT_WORKLOADS[i % len(TEXT_WORKLOADS)]
    return reference.text(
        work.images[name].data, list(concepts), threshold=work.thresholds[workload_key(name, concepts)]
    )


def _p1_detections(client, work: Workloads, reference) -> dict:
    """{workload: {"server": n, "reference": n}} for one request of each text workload."""
    counts = {}
    for i, (name, concepts) in enumerate(TEXT_WORKLOADS):
        entry = {"server": len(work.call(client, "text", i, fresh_id(name)))}
        if reference is not None:
            entry["reference"] = int(len(_reference_text(reference, work, i)[1]))
        counts[workload_key(name, concepts)] = entry
    return counts


def session_times(sessions: int, session, shared_id: str | None = None) -> list[float]:
    """Seconds of ``sessions`` calls session(image_id_of); image_id_of() gives one new id per
    session when ``shared_id`` names a photo, else a new id per call (the cache defeated)."""
    times = []
    for _ in range(sessions):
        sid = fresh_id(shared_id) if shared_id else None
        times.append(timed(session, (lambda: sid) if sid else (lambda: fresh_id("nocache")))[0])
    return times


def p2_clicks(client, work: Workloads, reference, sessions: int) -> dict:
    """``clicks`` different clicks on one image: server with its embedding cache (one new image_id
    per session) vs the server with the cache defeated (a new image_id per click) vs the
    reference (recomputes the image on every click, like the seeds). Times are per session."""
    clicks, image = work.clicks, work.images["astronaut"].data
    log(f"P2 {len(clicks)} clicks: {sessions} session(s) each of cached / no cache / reference")

    def session(image_id_of):
        return [client.points(image, [c], [1], image_id=image_id_of()) for c in clicks]

    cached = session_times(sessions, session, shared_id="astronaut")
    defeated = session_times(sessions, session)
    result = {
        "clicks": len(clicks),
        "server_cached": latency_stats(cached),
        "server_no_cache": latency_stats(defeated),
        "speedup_vs_no_cache": ratio(np.median(defeated), np.median(cached)),
    }
    if reference is None:
        return {**result, "reference": None, "speedup": None}
    ref = repeat_timed(lambda _: [reference.point(image, [c], [1]) for c in clicks], sessions)
    return {**result, "reference": latency_stats(ref), "speedup": ratio(np.median(ref), np.median(cached))}


def p3_concepts(client, work: Workloads, repeats: int) -> dict:
    """Four concepts in one request vs four separate requests (each with a new image_id, i.e. the
    image recomputed as in the seeds' one-text-per-request contract; and sharing one image_id)."""
    name, concepts = P3_WORKLOAD
    key = workload_key(name, concepts)
    log(f"P3 {len(concepts)} concepts: one request vs {len(concepts)} separate, {repeats} each")

    def separate(image_id_of):
        return [
            client.text(work.images[name].data, [c], threshold=work.thresholds[key], image_id=image_id_of())
            for c in concepts
        ]

    one = repeat_timed(lambda _: work.text(client, name, concepts, fresh_id(name)), repeats)
    single = repeat_timed(lambda _: work.text(client, name, concepts[:1], fresh_id(name)), repeats)
    apart, shared = session_times(repeats, separate), session_times(repeats, separate, shared_id=name)
    extra = (np.median(one) - np.median(single)) / (len(concepts) - 1)
    return {
        "concepts": list(concepts),
        "threshold": work.thresholds[key],
        "one_request": latency_stats(one),
        "single_concept_request": latency_stats(single),
        "separate_requests": latency_stats(apart),
        "separate_requests_shared_image_id": latency_stats(shared),
        "extra_concept_ms": round(float(extra) * 1e3, 3),
        "extra_concept_fraction": round(float(extra / np.median(single)), 4),
        "speedup": ratio(np.median(apart), np.median(one)),
        "speedup_vs_shared_image_id": ratio(np.median(shared), np.median(one)),
    }


def p4_mask_bytes(client, work: Workloads, modes) -> dict:
    """Mask bytes per response: COCO RLE (ours) vs the seeds' JSON of nested booleans
    (``json.dumps(mask.tolist())``; ``compact``: with separators (",", ":") as FastAPI sends it)."""
    log("P4 mask bytes: RLE vs nested-boolean JSON")
    cases = [
        (f"text {workload_key(n, c)}", lambda n=n, c=c: work.text(client, n, c, fresh_id(n)))
        for n, c in TEXT_WORKLOADS + (P3_WORKLOAD,)
        if "text" in modes
    ]
    cases += [(m, lambda m=m: work.call(client, m, 0, fresh_id(work.image_of(m, 0)))) for m in modes if m != "text"]
    rows = [{"case": label, **_mask_bytes(fn())} for label, fn in cases]
    totals = {k: sum(r[k] for r in rows) for k in ("masks", "rle_bytes", "json_bytes", "json_compact_bytes")}
    return {
        "cases": rows,
        "total": totals,
        "reduction": ratio(totals["json_bytes"], totals["rle_bytes"]),
        "reduction_compact": ratio(totals["json_compact_bytes"], totals["rle_bytes"]),
    }


def _mask_bytes(seg) -> dict:
    """RLE bytes of a Segmentation's masks vs the seeds' JSON of the same masks (point/box: one 2-D mask)."""
    masks = seg.masks
    nested = masks[0].tolist() if seg.mode in ("point", "box") and len(masks) == 1 else masks.tolist()
    return {
        "masks": int(len(seg)),
        "image_shape": list(seg.image_shape),
        "rle_bytes": int(sum(len(c) for c in seg.masks_rle)),
        "json_bytes": len(json.dumps(nested)),
        "json_compact_bytes": len(json.dumps(nested, separators=(",", ":"))),
    }


def p5_summary(rows: list) -> dict:
    """P5: per protocol and mode at the lowest concurrency: overhead = end-to-end − component compute."""
    valid = [r for r in rows if r.get("requests")]
    fractions = [r["overhead_fraction"] for r in valid]
    return {
        "rows": rows,
        "median_overhead_ms": round(float(np.median([r["overhead_ms"] for r in valid])), 3) if valid else None,
        "median_overhead_fraction": round(float(np.median(fractions)), 4) if valid else None,
    }


# ---------------------------------------------------------------- configuration echo

VERSION_PACKAGES = (
    "numpy",
    "tritonclient",
    "onnxruntime",
    "openvino",
    "pycocotools",
    "pillow",
    "torch",
    "transformers",
)


def versions(server_version: str) -> dict:
    """Python, installed package versions (None when absent) and the Triton server's version."""
    from importlib import metadata

    found = {"python": platform.python_version(), "tritonserver": server_version}
    for name in VERSION_PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def machine() -> dict:
    """CPU model, core counts, memory (GiB) and OS of this machine."""
    info = {
        "cpu_model": _proc_field("/proc/cpuinfo", "model name") or platform.processor() or "unknown",
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
    }
    if hasattr(os, "sched_getaffinity"):
        info["cpus_usable"] = len(os.sched_getaffinity(0))
    mem = _proc_field("/proc/meminfo", "MemTotal")
    info["memory_gib"] = round(int(mem.split()[0]) / 2**20, 1) if mem else None
    return info


def _proc_field(path: str, key: str) -> str | None:
    """Value of the first ``key: value`` line of a /proc file (None when unreadable or absent)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in lines if line.split(":")[0].strip() == key), None)


def echo_config(args, target: Target, stats: TritonStats, work: Workloads) -> dict:
    """The configuration part of the report."""
    flags = {
        k: getattr(args, k)
        for k in (
            "protocols",
            "modes",
            "concurrency",
            "warmup",
            "repeats",
            "compare_repeats",
            "clicks",
            "cache",
            "threshold",
            "keep",
            "points_per_side",
            "pred_iou_thresh",
            "stability_thresh",
            "quick",
        )
    }
    images = {n: {"shape": list(i.shape), "format": i.format, "bytes": len(i.data)} for n, i in work.images.items()}
    return {
        "model": target.model,
        "checkpoint": str(target.checkpoint) if target.checkpoint else None,
        "urls": target.urls,
        "served_precision": target.precision,
        "dims": stats.dims(),
        "model_config": _model_summary(target.checkpoint),
        "images": images,
        "thresholds": work.thresholds,
        "clicks": work.clicks,
        "box": list(BOX),
        "flags": flags,
        "versions": versions(stats.server_version()),
        "machine": machine(),
    }


def _model_summary(checkpoint: Path | str | None) -> dict | None:
    """Layer counts and widths read from the checkpoint's config.json (None without a local checkpoint)."""
    if checkpoint is None or not (Path(checkpoint) / "config.json").is_file():
        return None
    cfg = json.loads((Path(checkpoint) / "config.json").read_text())
    det = cfg.get("detector_config", cfg)
    vit = det.get("vision_config", {}).get("backbone_config", {})
    pick = lambda d, *keys: {k: d.get(k) for k in keys}  # noqa: E731
    return {
        "vit": pick(
            vit,
            "image_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "window_size",
            "global_attn_indexes",
        ),
        "text": pick(det.get("text_config", {}), "hidden_size", "num_hidden_layers"),
        "detr_encoder_layers": det.get("detr_encoder_config", {}).get("num_layers"),
        "detr_decoder_layers": det.get("detr_decoder_config", {}).get("num_layers"),
        "geometry_layers": det.get("geometry_encoder_config", {}).get("num_layers"),
        "queries": det.get("detr_decoder_config", {}).get("num_queries"),
        "hidden": det.get("vision_config", {}).get("fpn_hidden_size"),
    }


# ---------------------------------------------------------------- report


def format_table(report: dict) -> str:
    """The sweep table and the P1–P5 lines, for stdout."""
    head = (
        f"{'protocol':8} {'mode':6} {'conc':>4} {'n':>4} {'err':>3} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} "
        f"{'req/s':>7} {'sam3/ex':>7} {'vis/ex':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in report["sweep"]:
        lines.append(
            f"{r['protocol']:8} {r['mode']:6} {r['concurrency']:>4} {r.get('count', 0):>4} {r['errors']:>3} "
            f"{_ms(r.get('p50_ms'))} {_ms(r.get('p90_ms'))} {_ms(r.get('p99_ms'))} {r['throughput_rps']:>7.2f} "
            f"{_n(r.get('sam3_batch')):>7} {_n(r.get('vision_batch')):>6}"
        )
    return "\n".join(lines + [""] + goal_lines(report["comparisons"]) + bf16_lines(report["comparisons"]))


def _n(value) -> str:
    return f"{value:.2f}" if value is not None else "-"


def _ms(value) -> str:
    return f"{value:>9.1f}" if value is not None else f"{'-':>9}"


def _x(value) -> str:
    return f"{value:.2f}x" if value is not None else "n/a"


def _p50(stats) -> str:
    return f"{stats['p50_ms']:.1f} ms" if stats and stats.get("count") else "n/a"


def goal_lines(c: dict) -> list[str]:
    """One or two lines per goal, ratios as baseline / ours."""
    p1, p2, p3, p4, p5, rates = (c.get(k) for k in ("P1", "P2", "P3", "P4", "P5", "throughput"))
    lines = []
    if p1:
        lines += [
            f"P1 text vs reference: server {_p50(p1['server_cold'])} (cold image), {_p50(p1['server_warm'])} "
            f"(cached), reference {_p50(p1['reference'])} → speedup {_x(p1['speedup'])} "
            f"(cached {_x(p1['speedup_warm'])})"
        ]
    if c.get("P1box"):
        lines += [
            f"P1 box vs reference: server {_p50(c['P1box']['server_cold'])} (cold image), reference "
            f"{_p50(c['P1box']['reference'])} → speedup {_x(c['P1box']['speedup'])}"
        ]
    if p2:
        lines += [
            f"P2 {p2['clicks']} clicks: cached {_p50(p2['server_cached'])}, reference {_p50(p2['reference'])} → "
            f"speedup {_x(p2['speedup'])}; server without cache {_p50(p2['server_no_cache'])} → "
            f"{_x(p2['speedup_vs_no_cache'])}"
        ]
    if p3:
        lines += [
            f"P3 {len(p3['concepts'])} concepts: one request {_p50(p3['one_request'])}, separate "
            f"{_p50(p3['separate_requests'])} → speedup {_x(p3['speedup'])} (separate, shared image_id: "
            f"{_p50(p3['separate_requests_shared_image_id'])} → {_x(p3['speedup_vs_shared_image_id'])}); "
            f"each extra concept {p3['extra_concept_ms']:.1f} ms = "
            f"{100 * p3['extra_concept_fraction']:.0f}% of a one-concept request "
            f"({_p50(p3['single_concept_request'])})"
        ]
    if p4:
        t = p4["total"]
        lines += [
            f"P4 mask bytes ({t['masks']} masks): RLE {t['rle_bytes']:,} B vs JSON {t['json_bytes']:,} B → "
            f"{_x(p4['reduction'])} smaller (compact JSON {t['json_compact_bytes']:,} B → "
            f"{_x(p4['reduction_compact'])})"
        ]
    if p5:
        lines += ["P5 overhead (end-to-end − component compute, lowest concurrency):"]
        lines += [
            f"   {r['protocol']:5} {r['mode']:6} e2e {r['end_to_end_ms']:.1f} ms, components "
            f"{r['components_compute_ms']:.1f} ms, orchestrator {r['orchestrator_overhead_ms']:.1f} ms, "
            f"transport {r['transport_ms']:.1f} ms → overhead {r['overhead_ms']:.1f} ms "
            f"({100 * r['overhead_fraction']:.1f}%)" + ("" if r["consistent"] else " [other requests in stats]")
            for r in p5["rows"]
            if r.get("requests")
        ]
        lines += [
            f"   {r['protocol']:5} {r['mode']:6} breakdown ms: "
            + ", ".join(f"{k} {v:.1f}" for k, v in r["breakdown"].items())
            for r in p5["rows"]
            if r.get("breakdown")
        ]
    for cache, t in (rates or {}).items():
        lines += [
            f"throughput point {cache}: {t['rps'][0]:.2f} → {t['rps'][1]:.2f} req/s at concurrency "
            f"{t['concurrency'][0]} → {t['concurrency'][1]} ({_x(t['gain'])}); requests per execution "
            f"sam3 {_n(t['sam3_batch'][1])}, vision {_n(t['vision_batch'][1])}; errors {t['errors']}"
        ]
    return lines


# ---------------------------------------------------------------- main


def run(args) -> dict:
    """Everything: target, inputs, thresholds, sweep, goals; returns the JSON report."""
    started = time.time()
    with open_target(args) as target:
        protocols = [p for p in args.protocols if p in target.urls]
        if not protocols:
            raise SystemExit(f"no URL for protocol(s) {args.protocols}: give --grpc-url and/or --http-url")
        clients = {p: Sam3Client(target.urls[p], p, timeout_s=args.timeout) for p in protocols}
        stats = TritonStats(target.urls[protocols[0]], protocols[0])
        try:
            report = _measure(args, target, clients, stats)
        finally:
            stats.close()
            for client in clients.values():
                client.close()
    report["duration_s"] = round(time.time() - started, 1)
    return report


def _measure(args, target: Target, clients: dict, stats: TritonStats) -> dict:
    main = next(iter(clients.values()))
    images = load_images()
    log("calibrating text thresholds" if args.threshold == "auto" else "fixed text threshold")
    work = Workloads(
        images,
        thresholds_for(main, images, args),
        args.points_per_side,
        args.pred_iou_thresh,
        args.stability_thresh,
        click_points(args.clicks),
    )
    config = echo_config(args, target, stats, work)
    probes = Probes(stats, PhaseMetrics(target.metrics_url))
    rows, p5 = sweep(clients, probes, work, args)
    rates = throughput(main, probes, work, args) if "point" in args.modes else None
    reference = _reference(args, target)
    comparisons = {
        "P1": p1_text(main, work, reference, args.compare_repeats) if "text" in args.modes else None,
        "P1box": p1_box(main, work, reference, args.compare_repeats) if "box" in args.modes else None,
        "P2": p2_clicks(main, work, reference, args.compare_repeats) if "point" in args.modes else None,
        "P3": p3_concepts(main, work, args.compare_repeats) if "text" in args.modes else None,
        "P4": p4_mask_bytes(main, work, args.modes),
        "P5": p5_summary(p5),
        "throughput": rates,
    }
    config["reference"] = (
        {"checkpoint": str(target.checkpoint), "device": "cpu", "dtype": "float32", "torch_threads": _torch_threads()}
        if reference is not None
        else None
    )
    config["reference_bf16"] = add_bf16_reference(comparisons, work, args, target)
    return {"config": config, "sweep": rows, "comparisons": comparisons}


# ---------------------------------------------------------------- second reference: transformers + bf16 autocast


def add_bf16_reference(comparisons: dict, work: Workloads, args, target: Target) -> dict | None:
    """Time the same P1/P2 workloads on transformers under CPU bf16 autocast (same checkpoint, inputs)
    and add ``reference_bf16`` / ``speedup_bf16`` (P1 also ``speedup_warm_bf16``) beside the fp32
    reference's keys. The server's times are the ones already measured. Returns its config echo."""
    if args.no_reference or target.checkpoint is None:
        return None
    from bench.reference import ReferencePipeline

    log(f"loading the second reference (transformers, CPU bf16 autocast) from {target.checkpoint}")
    reference, repeats = ReferencePipeline(target.checkpoint, bf16=True), args.compare_repeats
    p1, p1box, p2 = comparisons.get("P1"), comparisons.get("P1box"), comparisons.get("P2")
    if p1box:
        image = work.images["astronaut"].data
        ref = latency_stats(repeat_timed(lambda _: reference.box(image, list(BOX)), repeats))
        p1box.update(reference_bf16=ref, speedup_bf16=ratio(ref.get("p50_ms"), p1box["server_cold"].get("p50_ms")))
    if p1:
        ref = latency_stats(repeat_timed(lambda i: _reference_text(reference, work, i), 2 * repeats))
        p1.update(
            reference_bf16=ref,
            speedup_bf16=ratio(ref.get("p50_ms"), p1["server_cold"].get("p50_ms")),
            speedup_warm_bf16=ratio(ref.get("p50_ms"), p1["server_warm"].get("p50_ms")),
        )
    if p2:
        image = work.images["astronaut"].data
        ref = latency_stats(repeat_timed(lambda _: [reference.point(image, [c], [1]) for c in work.clicks], repeats))
        p2.update(reference_bf16=ref, speedup_bf16=ratio(ref.get("p50_ms"), p2["server_cached"].get("p50_ms")))
    return {
        "checkpoint": str(target.checkpoint),
        "device": "cpu",
        "dtype": reference.dtype,
        "torch_threads": _torch_threads(),
    }


def bf16_lines(c: dict) -> list[str]:
    """P1/P2 against the bf16-autocast reference (P3 compares our server with itself: no reference)."""
    p1, p2 = c.get("P1") or {}, c.get("P2") or {}
    lines = []
    if p1.get("reference_bf16"):
        lines += [
            f"P1 text vs reference bf16 autocast {_p50(p1['reference_bf16'])} → speedup {_x(p1['speedup_bf16'])} "
            f"(cached {_x(p1['speedup_warm_bf16'])})"
        ]
    if (c.get("P1box") or {}).get("reference_bf16"):
        lines += [
            f"P1 box vs reference bf16 autocast {_p50(c['P1box']['reference_bf16'])} → speedup "
            f"{_x(c['P1box']['speedup_bf16'])}"
        ]
    if p2.get("reference_bf16"):
        lines += [
            f"P2 {p2['clicks']} clicks vs reference bf16 autocast {_p50(p2['reference_bf16'])} → "
            f"speedup {_x(p2['speedup_bf16'])}"
        ]
    return lines


def _reference(args, target: Target):
    """ReferencePipeline on the served checkpoint, or None (--no-reference, or no checkpoint known)."""
    if args.no_reference or target.checkpoint is None:
        log("reference skipped: " + ("--no-reference" if args.no_reference else "no --checkpoint given"))
        return None
    from bench.reference import ReferencePipeline

    log(f"loading the reference (transformers, CPU fp32) from {target.checkpoint}")
    return ReferencePipeline(target.checkpoint)


def _torch_threads() -> int | None:
    import torch

    return torch.get_num_threads()


def main(argv=None) -> int:
    args = parse_args(argv)
    report = run(args)
    print(format_table(report))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {args.json} ({report['duration_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
