"""The server the benchmark measures: a running one (--grpc-url/--http-url), or one started here
for --model over a cpu model repository built from its artifacts (exported if missing)."""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.progress import log
from export.checkpoint import BUILTIN
from export.repository import build_repository, read_precisions
from server.artifacts import artifacts_dir, ensure_artifacts
from server.triton import TritonServer


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
                read_precisions(repo),
            )


def _artifacts(args) -> Path:
    """--artifacts, else the cache dir of --model's exported artifacts."""
    return Path(args.artifacts) if args.artifacts else artifacts_dir(args.model)


def _build_repo(args, out: Path) -> Path:
    """Artifacts (exported if missing) → a cpu model repository, as ``sam3-triton serve`` does."""
    artifacts = _artifacts(args)
    log(f"artifacts of {args.model} in {artifacts} (exported now if missing)")
    ensure_artifacts(args.model, artifacts)
    return build_repository(artifacts, out, "cpu", orchestrator_params={"image_cache_mb": args.image_cache_mb})


def _model_checkpoint(args) -> Path | str:
    """--checkpoint, else what the --model artifacts came from: a built-in's dir beside them, the
    checkpoint dir, or the Hugging Face id."""
    if args.checkpoint:
        return Path(args.checkpoint)
    if args.model in BUILTIN:
        return _artifacts(args) / f"{args.model}-checkpoint"
    path = Path(args.model).expanduser()
    return path if path.is_dir() else args.model
