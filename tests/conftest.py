"""Shared fixtures: the tiny model exported once per session, and one real Triton server.

- ``tiny_artifacts``: ``python -m export all --model tiny`` output (graphs, tokenizer, manifest,
  parity report). Set SAM3_TEST_ARTIFACTS=DIR to reuse an export across runs (it is re-made
  when DIR has no valid manifest).
- ``tiny_checkpoint``: the tiny checkpoint directory the artifacts were exported from.
- ``sam3_server``: the real bundled tritonserver serving the cpu repository of the tiny model
  on free 127.0.0.1 ports (session scope; stopped at the end). Components run in OpenVINO at
  fp32, the precision the strict parity tests are written for (bf16: tests/test_bf16_parity.py).
- ``orchestrator_modules``: puts triton_repo/sam3/1 on sys.path so tests import its modules;
  ``modules``: those modules by short name (cache, pipeline, post, ...).
"""

from __future__ import annotations

import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from client.api import Sam3Client
from export.checkpoint import load_models
from export.repository import build_repository
from server.artifacts import ensure_artifacts
from server.triton import TritonServer

ROOT = Path(__file__).resolve().parents[1]
ORCHESTRATOR_DIR = ROOT / "triton_repo" / "sam3" / "1"


@pytest.fixture(scope="session")
def tiny_artifacts(tmp_path_factory) -> Path:
    target = os.environ.get("SAM3_TEST_ARTIFACTS")
    out = Path(target) if target else tmp_path_factory.mktemp("tiny-artifacts")
    return ensure_artifacts("tiny", out, verify=True)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_artifacts) -> Path:
    path = tiny_artifacts / "tiny-checkpoint"
    assert (path / "model.safetensors").is_file(), "the tiny export keeps its checkpoint beside the graphs"
    return path


@pytest.fixture(scope="session")
def tiny_models(tiny_checkpoint):
    """(Sam3Model, Sam3TrackerModel) of the tiny checkpoint, loaded strictly."""
    return load_models(tiny_checkpoint)


@dataclass
class RunningServer:
    """Endpoints of a running Triton server (see server.triton.TritonServer)."""

    process: object
    http_address: str
    grpc_url: str
    metrics_url: str
    repo: Path
    artifacts: Path


def tiny_repository(tiny_artifacts: Path, out: Path, **options) -> Path:
    """The session server's cpu repository of the tiny model at ``out``: OpenVINO fp32, a 64 MiB image cache, the
    default in-process heads; ``options``: more build_repository keywords."""
    return build_repository(
        tiny_artifacts, out, "cpu", orchestrator_params={"image_cache_mb": 64}, precision="fp32", **options
    )


@pytest.fixture(scope="session")
def sam3_server(tiny_artifacts, tmp_path_factory):
    repo = tiny_repository(tiny_artifacts, tmp_path_factory.mktemp("repo") / "cpu")
    with TritonServer(repo, ready_timeout_s=180) as server:
        yield RunningServer(server, server.http_address, server.grpc_url, server.metrics_url, repo, tiny_artifacts)


@pytest.fixture(scope="module")
def client(sam3_server):
    """The project's client library over gRPC to the session server."""
    with Sam3Client(sam3_server.grpc_url, protocol="grpc") as c:
        yield c


@pytest.fixture(scope="session")
def gateway_url(sam3_server):
    """The REST gateway (server/gateway.py) on a free port, in front of the session server."""
    from server.gateway import BackgroundServer, create_app  # noqa: PLC0415 (imports starlette: serve extra)

    with BackgroundServer(create_app(sam3_server.grpc_url)) as server:
        yield server.url


@pytest.fixture(scope="session")
def orchestrator_modules():
    """Make the orchestrator's modules (pipeline, preprocess, ...) importable."""
    if str(ORCHESTRATOR_DIR) not in sys.path:
        sys.path.insert(0, str(ORCHESTRATOR_DIR))
    return ORCHESTRATOR_DIR


def encode_image(array: np.ndarray, fmt: str = "PNG") -> bytes:
    """HxWx3 uint8 → encoded image bytes."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt)
    return buf.getvalue()


@pytest.fixture(scope="session")
def astronaut_png() -> bytes:
    """A real photo with a person (512×512, from scikit-image's data)."""
    from skimage import data  # noqa: PLC0415 (optional: test extra)

    return encode_image(data.astronaut())


@pytest.fixture(scope="session")
def coffee_jpeg() -> bytes:
    """A real non-square photo (400×600) with a cup, as JPEG."""
    from skimage import data  # noqa: PLC0415 (optional: test extra)

    return encode_image(data.coffee(), "JPEG")


@pytest.fixture(scope="module")
def modules(orchestrator_modules):
    """The orchestrator's modules by short name (cache, pipeline, post, post_torch, request, stages, text_tokens)."""
    import cache  # noqa: PLC0415 (after sys.path setup)
    import pipeline  # noqa: PLC0415 (after sys.path setup)
    import postprocess  # noqa: PLC0415 (after sys.path setup)
    import postprocess_torch  # noqa: PLC0415 (after sys.path setup)
    import request  # noqa: PLC0415 (after sys.path setup)
    import stages  # noqa: PLC0415 (after sys.path setup)
    import text_tokens  # noqa: PLC0415 (after sys.path setup)

    return dict(
        cache=cache,
        pipeline=pipeline,
        post=postprocess,
        post_torch=postprocess_torch,
        request=request,
        stages=stages,
        text_tokens=text_tokens,
    )
