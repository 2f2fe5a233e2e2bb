"""``sam3-triton serve``: export if needed, build the repository, run Triton (+ REST gateway).

    sam3-triton serve --model tiny|facebook/sam3|DIR [--target cpu] [--http-port 8000]
                      [--grpc-port 8001] [--metrics-port 8002] [--gateway-port 8080]
                      [--drain-timeout 30] [--no-watchdog] [--runtime openvino|ort] [--precision auto|fp32|bf16]
                      [--queue-size N] [--queue-timeout-ms MS] [--detached-requests N]
    sam3-triton gpu-check [--model bench|full] [--json FILE]    (NVIDIA GPU: see server/gpu_check)

On the cpu target the components run in OpenVINO (default) or ONNX Runtime; ``--precision auto``
is bf16 where the CPU has it (each component parity-gated, else fp32). The runtime and the
effective precision of every component are printed before Triton starts.
Prints the endpoints when every model is ready. A watchdog (server/watchdog.py) reloads a
model whose stage died, or restarts tritonserver. Ctrl-C / SIGTERM: stop accepting, let requests
in flight finish for up to --drain-timeout seconds, then exit. A model that fails to load at
start exits non-zero with Triton's reason.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from dataclasses import replace
from pathlib import Path

from export.repository import RepositoryError, build_repository, read_precisions
from sam3_spec import ORCHESTRATOR_PARAMETERS, SAM3_BATCHING
from server.artifacts import artifacts_dir, ensure_artifacts
from server.gpu_check.cli import add_arguments, run_cli
from server.triton import TritonServer, TritonStartError, ports_in_use
from server.watchdog import Watchdog


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sam3-triton", description="SAM3 on NVIDIA Triton")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve a SAM3 model with the bundled Triton server")
    serve.add_argument("--model", default="tiny", help="tiny | facebook/sam3 | checkpoint dir (default tiny)")
    serve.add_argument("--artifacts", type=Path, help="exported artifacts dir (default: per-model cache dir)")
    serve.add_argument("--repo", type=Path, help="where to write the model repository (default: beside artifacts)")
    serve.add_argument("--target", choices=("cpu", "gpu"), default="cpu")
    serve.add_argument("--host", default="127.0.0.1", help="interface for Triton and the gateway (0.0.0.0: all)")
    serve.add_argument("--http-port", type=int, default=8000)
    serve.add_argument("--grpc-port", type=int, default=8001)
    serve.add_argument("--metrics-port", type=int, default=8002)
    serve.add_argument("--gateway-port", type=int, default=8080, help="REST gateway + web page port (0 = off)")
    serve.add_argument(
        "--instances",
        default="",
        help="e.g. sam3=1,vision=2 (default 1 each, but prompt=2 on the cpu target; with the prompt head in "
        "the orchestrator's process, the default, prompt=N sets its one-thread runners there, 3 unless given)",
    )
    serve.add_argument(
        "--image-cache-mb",
        type=int,
        default=ORCHESTRATOR_PARAMETERS["image_cache_mb"],
        help="image-embedding cache in MiB (default %(default)s); the cpu target holds this much host memory from start",
    )
    serve.add_argument("--hf-token", default=os.environ.get("HF_TOKEN"))
    serve.add_argument(
        "--skip-verify",
        action="store_true",
        help="skip the ONNX Runtime vs PyTorch parity check after a fresh export (at real size it needs ~20 GB of RAM)",
    )
    serve.add_argument(
        "--runtime",
        choices=("openvino", "ort"),
        default="openvino",
        help="cpu target: component runtime (default openvino; ort = ONNX Runtime, fp32)",
    )
    serve.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="cpu target: auto = bf16 where the CPU supports it and the component passes "
        "its bf16 parity gate, else fp32 (default auto)",
    )
    serve.add_argument(
        "--local-heads",
        type=_heads,
        help="cpu target: components the sam3 orchestrator runs in its own process, comma list or 'none' "
        "(default: prompt; README, Heads in the orchestrator's process)",
    )
    serve.add_argument(
        "--queue-size",
        type=_positive_int,
        help="Triton queue policy on sam3: refuse (UNAVAILABLE, REST 503) beyond N queued requests. Off by "
        "default: with any queue policy Triton's batcher can stall a request ~500 ms (README, Concurrency)",
    )
    serve.add_argument(
        "--queue-timeout-ms",
        type=_positive_int,
        help="Triton queue policy on sam3: refuse a request queued longer than this (clients may ask for less)",
    )
    serve.add_argument(
        "--detached-requests",
        type=_positive_int,
        default=ORCHESTRATOR_PARAMETERS["detached_requests"],
        help="text/auto requests sam3 accepts past execute, unanswered at once (default %(default)s); beyond "
        "them Triton queues, so the bound on waiting requests is this + max_batch_size + --queue-size",
    )
    serve.add_argument("--ready-timeout", type=float, default=300.0)
    serve.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        help="on SIGTERM, seconds requests in flight may take to finish (30)",
    )
    serve.add_argument(
        "--no-watchdog", action="store_true", help="do not watch the models (no reload of a dead stage, no restart)"
    )
    serve.add_argument("--watchdog-interval", type=float, default=1.0, help="seconds between health checks (1)")
    _add_gpu_check(sub)
    return parser.parse_args(argv)


def _add_gpu_check(sub) -> None:
    """``sam3-triton gpu-check``: engines, parity and latency on an NVIDIA GPU (server/gpu_check)."""
    add_arguments(
        sub.add_parser(
            "gpu-check",
            help="build TensorRT engines, check them against ONNX Runtime and "
            "time them (NVIDIA GPU; stops at once without one)",
        )
    )


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number ≥ 1; got {text!r}")
    return int(text)


def _batching(args):
    """sam3's batching from the spec, with the queue policy the flags ask for (none by default)."""
    timeout_us = None if args.queue_timeout_ms is None else args.queue_timeout_ms * 1000
    return replace(SAM3_BATCHING, max_queue_size=args.queue_size, queue_timeout_us=timeout_us)


def _heads(text: str) -> tuple[str, ...]:
    """--local-heads: "none" → (), else the comma list's names."""
    return () if text.strip() == "none" else tuple(h.strip() for h in text.split(",") if h.strip())


def _instances(text: str) -> dict[str, int]:
    pairs = [item.split("=") for item in text.split(",") if item.strip()]
    try:
        return {name.strip(): int(count) for name, count in pairs}
    except ValueError as err:
        raise SystemExit(f"--instances must look like sam3=1,vision=2; got {text!r}") from err


def build(args) -> Path:
    """Artifacts (exported if missing) → model repository; returns the repository path."""
    artifacts = args.artifacts or artifacts_dir(args.model)
    ensure_artifacts(args.model, artifacts, args.hf_token, verify=not args.skip_verify)
    repo = args.repo or artifacts.parent / f"repository-{args.target}"
    params = {"image_cache_mb": args.image_cache_mb, "detached_requests": args.detached_requests}
    try:
        repo = build_repository(
            artifacts,
            repo,
            args.target,
            _instances(args.instances),
            orchestrator_params=params,
            runtime=args.runtime,
            precision=args.precision,
            batching=_batching(args),
            local_heads=args.local_heads,
        )
    except RepositoryError as err:
        raise SystemExit(f"error: {err}") from None
    _print_precisions(repo)
    return repo


def _print_precisions(repo: Path) -> None:
    """One line: the cpu runtime and each component's effective precision, with its static copies' where they
    differ (nothing for a gpu repository)."""
    record = read_precisions(repo)
    if record:
        copies = record.get("static_precisions", {})
        parts = ", ".join(_precision_part(name, p, copies.get(name, [])) for name, p in record["components"].items())
        print(f"cpu runtime {record['runtime']}: {parts}", flush=True)


def _precision_part(name: str, precision: str, copies: list[str]) -> str:
    """Say "concept fp32", or "concept fp32 (static copies bf16)" where a static copy runs another precision."""
    other = sorted({p for p in copies if p != precision})
    return f"{name} {precision}" + (f" (static copies {'/'.join(other)})" if other else "")


def serve(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    taken = _taken_ports(args)
    if taken:  # before minutes of building and loading
        print(
            f"error: already in use on {args.host}: {', '.join(taken)}. Stop what serves it, or choose other "
            "ports (0: a free one; --gateway-port 0: no gateway)",
            file=sys.stderr,
        )
        return 2
    repo = build(args)
    server = TritonServer(
        repo,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        ready_timeout_s=args.ready_timeout,
        address=args.host,
        exit_timeout_s=max(1, round(args.drain_timeout)),
        stop_grace_s=args.drain_timeout + 10,
    )
    try:
        server.start().wait_ready()
    except TritonStartError as err:
        print(f"error: Triton could not start or did not become ready:\n{err}", file=sys.stderr)
        server.stop()
        return 1
    watchdog = None if args.no_watchdog else _start_watchdog(server, args.watchdog_interval)
    try:
        gateway = (
            _start_gateway(server.grpc_url, args.host, args.gateway_port, watchdog, args.drain_timeout)
            if args.gateway_port
            else None
        )
    except RuntimeError as err:  # e.g. its port was taken meanwhile: Triton must not run on, orphaned
        print(f"error: {err}", file=sys.stderr)
        return _shut_down(server, watchdog, None) or 1
    _print_endpoints(server, gateway)
    _wait_for_signal(server, watchdog)
    return _shut_down(server, watchdog, gateway)


def _taken_ports(args) -> list[str]:
    """ "--<flag> <port>" for each port given to serve that something already listens on."""
    flags = {"gateway": args.gateway_port, "http": args.http_port, "grpc": args.grpc_port, "metrics": args.metrics_port}
    given = {name: port for name, port in flags.items() if port}
    busy = set(ports_in_use(given.values(), args.host))
    return [f"--{name}-port {port}" for name, port in given.items() if port in busy]


def _start_watchdog(server, interval_s: float):
    return Watchdog(server, interval_s=interval_s).start()


def _start_gateway(grpc_url: str, host: str, port: int, watchdog=None, drain_s: float = 30.0):
    """The REST gateway (server/gateway.py) served by uvicorn in a daemon thread."""
    from server.gateway import BackgroundServer, create_app  # noqa: PLC0415 (imports starlette: serve extra)

    return BackgroundServer(create_app(grpc_url, watchdog=watchdog), host=host, port=port, drain_s=drain_s).start()


def _shut_down(server, watchdog, gateway) -> int:
    """Stop healing, drain the gateway (it stops accepting at once), then stop Triton (it drains too)."""
    print("shutting down: no new requests; waiting for requests in flight", flush=True)
    if watchdog is not None:
        watchdog.stop()
    if gateway is not None:
        gateway.stop()
    return 0 if server.stop() in (0, None, -signal.SIGTERM) else 1


def _print_endpoints(server, gateway) -> None:
    lines = [
        f"Triton HTTP   {server.http_url}",
        f"Triton gRPC   {server.grpc_url}",
        f"metrics       {server.metrics_url}",
    ]
    if gateway is not None:
        lines.append(f"REST gateway  {gateway.url}/  (web page: open it in a browser)")
    print("sam3-triton is ready:\n  " + "\n  ".join(lines) + "\nCtrl-C to stop.", flush=True)


def _wait_for_signal(server, watchdog=None) -> None:
    """Block until SIGINT/SIGTERM, or until Triton exits by itself with no watchdog to restart it."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        if watchdog is None and server.returncode is not None:
            print(f"error: tritonserver exited with code {server.returncode}:\n{server.log_tail()}", file=sys.stderr)
            return


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.command == "gpu-check":
        return run_cli(args)
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
