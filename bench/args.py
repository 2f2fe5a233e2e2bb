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
goes to stderr. Inputs are real photos from scikit-image: astronaut (person), coffee (cup);
``--photo-scale`` enlarges them to camera sizes (JPEG).
"""
# The docstring above is the --help text of sam3-bench (parse_args passes it as the description).

from __future__ import annotations

import argparse
from pathlib import Path

from sam3_spec import MODES, ORCHESTRATOR_PARAMETERS

PROTOCOLS = ("grpc", "http")
QUICK = dict(
    warmup=1,
    repeats=2,
    concurrency="1,2",
    compare_repeats=2,
    clicks=3,
    points_per_side=4,
    throughput_concurrency=2,
    throughput_rounds=2,
)


def parse_args(argv=None) -> argparse.Namespace:
    """The flags of ``argv`` (default: sys.argv), checked; exits with a usage error on a bad one."""
    p = argparse.ArgumentParser(
        prog="sam3-bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    target = p.add_argument_group("target: a running server (--grpc-url/--http-url) or one started here (--model)")
    target.add_argument("--grpc-url", help="host:port of a running server's gRPC endpoint")
    target.add_argument("--http-url", help="host:port of a running server's HTTP endpoint")
    target.add_argument(
        "--metrics-url",
        type=metrics_url,
        help="a running server's Prometheus endpoint, for the P5 phase breakdown: http://host:8002/metrics "
        "or host:port (http:// and /metrics are added)",
    )
    target.add_argument("--model", help="tiny | bench | checkpoint dir: export if needed and start a server")
    target.add_argument("--artifacts", type=Path, help="exported artifacts of --model (default: its cache dir)")
    target.add_argument(
        "--checkpoint",
        type=Path,
        help="checkpoint dir of the served weights, for the reference "
        "(default with --model: the one the artifacts came from)",
    )
    target.add_argument(
        "--image-cache-mb",
        type=int,
        default=ORCHESTRATOR_PARAMETERS["image_cache_mb"],
        help="server image cache with --model, MiB",
    )
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
        "--throughput-rounds",
        type=int,
        default=3,
        help="rounds of the throughput comparison (both loads each round, in alternating order; medians)",
    )
    p.add_argument(
        "--cache",
        choices=("cold", "warm"),
        default="cold",
        help="sweep: cold = a new image_id per request (vision runs every time); warm = one id per image",
    )
    p.add_argument("--threshold", default="auto", help="text score threshold, or 'auto': keep --keep best per concept")
    p.add_argument("--keep", type=int, default=3, help="detections per concept that --threshold auto keeps")
    p.add_argument(
        "--photo-scale",
        type=float,
        default=1.0,
        help="enlarge both photos this many times and send them as JPEG, like camera uploads (e.g. 3.75: "
        "the astronaut at 1920×1920); clicks and box scale with them",
    )
    p.add_argument("--points-per-side", type=int, default=16, help="auto mode grid")
    p.add_argument("--pred-iou-thresh", type=float, default=0.0, help="auto mode filter (0 keeps every mask)")
    p.add_argument("--stability-thresh", type=float, default=0.0, help="auto mode filter (0 keeps every mask)")
    p.add_argument("--timeout", type=float, default=600.0, help="client timeout per request, s")
    p.add_argument("--json", type=Path, default=Path("sam3-bench.json"), help="where to write the JSON report")
    p.add_argument("--quick", action="store_true", help="smoke run: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    return _check_args(p, p.parse_args(argv))


def metrics_url(text: str) -> str:
    """A Prometheus endpoint URL from ``text``: "host:port" gets http:// and /metrics; a URL stays as given."""
    if "://" in text:
        return text
    return f"http://{text}" + ("" if "/" in text else "/metrics")


def _check_args(parser, args) -> argparse.Namespace:
    """Apply --quick, check the target and the numbers, parse the comma lists and --threshold."""
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
        or args.throughput_rounds < 1
    ):
        parser.error(
            "--concurrency, --repeats, --compare-repeats, --clicks, --keep and --throughput-rounds must be ≥ 1, "
            "--warmup ≥ 0"
        )
    if not 0.05 <= args.photo_scale <= 16:
        parser.error(f"--photo-scale must be in [0.05, 16]; got {args.photo_scale}")
    if args.threshold != "auto":
        args.threshold = _threshold(parser, args.threshold)
    return args


def _choices(parser, flag: str, text: str, allowed: tuple) -> list[str]:
    """The items of a comma list, each one of ``allowed``."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in items if t not in allowed]
    if unknown or not items:
        parser.error(f"{flag}: unknown {unknown}; choose from {', '.join(allowed)}")
    return items


def _threshold(parser, text: str) -> float:
    """A --threshold number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        parser.error(f"--threshold must be 'auto' or a number in [0, 1]; got {text!r}")
    if not 0.0 <= value <= 1.0:
        parser.error(f"--threshold must be in [0, 1]; got {value}")
    return value
