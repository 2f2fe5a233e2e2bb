"""End-to-end timing through a real Triton server on the GPU repository (the NGC image's tritonserver)."""

from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from client.api import Sam3Client
from export.manifest import load_manifest
from export.repository import build_repository
from export.trt import latency_summary
from export.trt.pins import TRITON_BINARY
from server.triton import TritonInstall, TritonServer, cuda_pool_args, cuda_pool_bytes

Log = Callable[[str], None]
IMAGE_SHAPE = (480, 640)  # height, width of the synthetic request images


def synthetic_image(seed: int, shape=IMAGE_SHAPE) -> bytes:
    """A PNG of smooth shapes + noise (distinct per seed, so no request hits an embedding cache)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(xx / (20 + 5 * c) + seed) * np.cos(yy / (25 + 3 * c)) for c in range(3)], -1)
    pixels = np.clip(127 + 100 * base + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_requests(client, iterations: int, warmup: int) -> dict:
    """{"text": latency summary, "point": latency summary}: sequential requests, a new image each."""
    images = [synthetic_image(i) for i in range(warmup + iterations)]
    center = [[IMAGE_SHAPE[1] / 2, IMAGE_SHAPE[0] / 2]]
    calls = {"text": lambda img: client.text(img, "object"), "point": lambda img: client.points(img, center, [1])}
    out = {}
    for mode, call in calls.items():
        for img in images[:warmup]:
            call(img)
        out[mode] = latency_summary([_timed(lambda: call(img)) for img in images[warmup:]])
    return out


def throughput(client, requests: int, concurrency: int) -> dict:
    """Text requests from ``concurrency`` threads (Triton batches them): images per second."""
    images = [synthetic_image(10_000 + i) for i in range(requests)]
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda img: client.text(img, "object"), images))
    seconds = time.perf_counter() - start
    return {"images_per_s": requests / seconds, "requests": requests, "concurrency": concurrency, "seconds": seconds}


def run_e2e(
    artifacts: Path,
    engine_dir: Path,
    work: Path,
    *,
    iterations: int,
    warmup: int,
    requests: int,
    concurrency: int,
    log: Log,
) -> dict:
    """Build the GPU repository, start tritonserver on it (CUDA pool sized from the spec), time requests."""
    repo = build_repository(
        artifacts,
        work / "repository-gpu",
        target="gpu",
        engines_dir=engine_dir,
    )
    pool = cuda_pool_bytes(load_manifest(artifacts).dims)
    server = TritonServer(
        repo,
        install=TritonInstall(Path(TRITON_BINARY), None),
        extra_args=cuda_pool_args(pool),
        ready_timeout_s=900,
        log_path=work / "tritonserver.log",
    )
    log(f"starting tritonserver on {repo} (CUDA pool {pool >> 20} MiB) ...")
    with server, Sam3Client(server.grpc_url, protocol="grpc", timeout_s=300) as client:
        timings = time_requests(client, iterations, warmup)
        timings["throughput"] = throughput(client, requests, concurrency)
    return {"ran": True, "reason": "", "cuda_pool_bytes": pool, **timings}
