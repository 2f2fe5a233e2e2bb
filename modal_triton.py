"""SAM 3 on NVIDIA Triton + TensorRT on a Modal H200: build once, then serve.

    modal run modal_triton.py::build                    # export → TensorRT → parity → repository (Volume)
    modal deploy modal_triton.py                        # REST gateway + Triton HTTP (+ gRPC tunnel on demand)
    modal run modal_triton.py::smoke --image photo.jpg --text person
    modal run modal_triton.py::bench --args "--concurrency 8"
    modal run modal_triton.py::verify [--model bench|full|served]   # = sam3-triton gpu-check on an H200
    modal run modal_triton.py::segment_dataset --images ./photos --text "person,dog" --out coco.json
    modal run modal_triton.py::tunnel                   # public gRPC address of a serving container

Everything is keyed so that a stale engine is never served: a build lives in
``/vol/builds/<model>/<revision sha>/trt-<TensorRT>/<GPU>/`` and the serving container only
starts from the build recorded for ITS TensorRT version and GPU name. See docs/DEPLOY.md.

Two apps: ``app`` (deployed: the serving class and the client entrypoints) and ``build_app``
(``::build`` and ``::verify``). ``modal run`` creates every object of the runnable's app, so
keeping them apart means building never needs the ``sam3-api-key`` secret nor the serving
image, and serving never needs the Hugging Face secret.

The pure helpers below (paths, markers, request/response shaping, COCO assembly, report
formatting, image recipes) run without Modal credentials and are unit-tested
(tests/test_modal_app.py).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

import modal

from export.manifest import sha256
from export.trt import (
    EXPORT_PACKAGES,
    GPU_CHECK_PACKAGES,
    SERVING_PACKAGES,
    SETUPTOOLS_PIP,
    TENSORRT_VERSION,
    TRITON_BINARY,
    TRITON_IMAGE,
    engine_dir,
    sanitize,
)
from server.triton import TritonInstall, TritonServer, cuda_pool_args, cuda_pool_bytes
from server.watchdog import Watchdog

# ---------------------------------------------------------------- settings (documented in docs/DEPLOY.md)
APP_NAME = "sam3-triton"
MODEL_ID = "facebook/sam3"  # gated on the Hub: accept its license, then create HF_SECRET_NAME
MODEL_REVISION = "main"  # resolved to a commit sha at build time; pin a sha for reproducible builds
GPU = "H200"  # the GPU engines are built AND served on (engines are GPU-specific)

VOLUME_NAME = "sam3-triton"  # HF cache + ONNX + engines + repositories + reports
VOLUME_ROOT = PurePosixPath("/vol")
HF_HOME = VOLUME_ROOT / "hf"
HF_SECRET_NAME = "huggingface-secret"  # must hold HF_TOKEN (read access to facebook/sam3)
HF_TOKEN_ENV = "HF_TOKEN"
HF_ALLOW_PATTERNS = ("*.json", "*.safetensors", "*.txt")  # config, weights, tokenizer: not the duplicate .pt
API_SECRET_NAME = "sam3-api-key"  # must hold SAM3_API_KEY: the bearer token the gateway requires
API_KEY_ENV = "SAM3_API_KEY"

HTTP_PORT, GRPC_PORT, METRICS_PORT = 8000, 8001, 8002
ORCHESTRATOR_PARAMS = {
    "image_cache_mb": 8192
}  # `sam3` parameters for the GPU target (target=gpu is set by build_repository)
TRITON_INSTANCES = None  # {component: instance count}; None = export.repository defaults

# Autoscaling and concurrency of the serving class.
MIN_CONTAINERS = 0  # scale to zero when idle (a cold start reloads the engines: see DEPLOY.md)
MAX_CONTAINERS = 4  # upper bound on H200s
BUFFER_CONTAINERS = 0  # extra idle containers kept while busy
SCALEDOWN_WINDOW_S = 600  # idle seconds before a container stops
MAX_INPUTS = 32  # concurrent requests per container (Triton batches them)
TARGET_INPUTS = 16  # concurrency the autoscaler aims for per container

SERVE_CPU, SERVE_MEMORY_MIB = 8.0, 32768
REQUEST_TIMEOUT_S = 600  # per request / per method call
STARTUP_TIMEOUT_S = 1200  # @modal.enter: load engines from the Volume + Triton readiness
TRITON_READY_TIMEOUT_S = 900
WEB_SERVER_STARTUP_S = 60
BUILD_CPU, BUILD_MEMORY_MIB = 16.0, 131072
BUILD_TIMEOUT_S = 3 * 3600  # first build: download ~3.4 GB, export, 4 engines, parity
VERIFY_TIMEOUT_S = 3600
GPU_CHECK_DIR = VOLUME_ROOT / "gpu-check"  # gpu-check's exports and engines, kept between ::verify runs

# Packages (pins: export/trt/pins.py). Serving: the orchestrator (numpy, pillow, tokenizers,
# pycocotools, OpenCV; torch only for the GPU post-processing of DLPack tensors), the gateway and the
# client it uses. Export/build: torch + transformers + the pinned TensorRT. gpu-check: both.
PROJECT_PACKAGES = ("sam3_spec", "export", "server", "client", "bench")  # sam3_spec: the contract module
REPO_ROOT = Path(__file__).resolve().parent

BUILD_DONE = "BUILD_DONE.json"
REPORT = "report.json"


class BuildMissingError(RuntimeError):
    """No complete build for this model / TensorRT / GPU on the Volume; says how to make one."""


# ---------------------------------------------------------------- images, volume, secrets, app

# The Triton image (Ubuntu 24.04, Python 3.12) links only /usr/bin/python3; Modal runs `python`.
TRITON_SETUP = (
    "RUN ln -sf /usr/bin/python3 /usr/local/bin/python",
    "RUN python -m pip --version || (apt-get update && apt-get install -y --no-install-recommends python3-pip)",
)


def pip_steps(packages) -> list[str]:
    """Shell commands installing ``packages`` into the Triton image's system Python, in order.

    setuptools first, with --ignore-installed: torch needs setuptools ≥ 77, and pip cannot
    uninstall the distro's setuptools 68 ("RECORD file not found"), so the new one goes beside it
    (/usr/local/lib/python3.12/dist-packages comes first on sys.path).
    """
    return [
        shlex.join(["python", "-m", "pip", "install", "--no-cache-dir", "--ignore-installed", SETUPTOOLS_PIP]),
        shlex.join(["python", "-m", "pip", "install", "--no-cache-dir", *packages]),
    ]


def triton_image(packages) -> modal.Image:
    """The pinned Triton image + ``packages`` (see pip_steps); the project code is added by _with_project."""
    return (
        modal.Image.from_registry(TRITON_IMAGE, setup_dockerfile_commands=list(TRITON_SETUP))
        .env({"PIP_BREAK_SYSTEM_PACKAGES": "1", "PYTHONUNBUFFERED": "1"})
        .run_commands(*pip_steps(packages))
        .entrypoint([])
    )


def _with_project(image: modal.Image) -> modal.Image:
    """Add this repository's code (last: Modal mounts local files after the build steps)."""
    return image.add_local_dir(REPO_ROOT / "triton_repo", "/root/triton_repo").add_local_python_source(
        *PROJECT_PACKAGES, ignore=["**/*.pyc"]
    )  # + data files (server/web)


serving_image = _with_project(triton_image(SERVING_PACKAGES))
gpu_check_image = _with_project(triton_image(GPU_CHECK_PACKAGES).env({"HF_HOME": str(HF_HOME)}))

export_image = _with_project(
    modal.Image.debian_slim(python_version="3.11")
    .pip_install(*EXPORT_PACKAGES)
    .env({"HF_HOME": str(HF_HOME), "PYTHONUNBUFFERED": "1"})
)

volume = modal.Volume.from_name(VOLUME_NAME, create_if_missing=True)
hf_secret = modal.Secret.from_name(HF_SECRET_NAME, required_keys=[HF_TOKEN_ENV])
api_secret = modal.Secret.from_name(API_SECRET_NAME, required_keys=[API_KEY_ENV])

app = modal.App(APP_NAME)  # `modal deploy modal_triton.py` deploys this one
build_app = modal.App(f"{APP_NAME}-build")  # ::build and ::verify (never need the API key secret)


# ---------------------------------------------------------------- build layout (pure)


@dataclass(frozen=True)
class BuildKey:
    """What an engine depends on: model id, resolved revision, TensorRT version, GPU name."""

    model: str
    revision: str
    tensorrt: str
    gpu: str

    def directory(self, root) -> Path:
        """``root/builds/<model>/<revision>/trt-<version>/<gpu>`` (all parts sanitized)."""
        return (
            Path(str(root))
            / "builds"
            / sanitize(self.model)
            / sanitize(self.revision)
            / f"trt-{sanitize(self.tensorrt)}"
            / sanitize(self.gpu)
        )


@dataclass(frozen=True)
class BuildPaths:
    """The parts of one build directory."""

    root: Path
    key: BuildKey

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def engines(self) -> Path:
        return engine_dir(self.root / "engines", self.key.tensorrt, self.key.gpu)

    @property
    def repository(self) -> Path:
        return self.root / "repository"

    @classmethod
    def of(cls, volume_root, key: BuildKey) -> "BuildPaths":
        return cls(key.directory(volume_root), key)


def pointer_path(volume_root, model: str, tensorrt: str, gpu: str) -> Path:
    """``root/current/<model>/trt-<version>/<gpu>.json``: the build a server with this TensorRT + GPU serves."""
    return Path(str(volume_root)) / "current" / sanitize(model) / f"trt-{sanitize(tensorrt)}" / f"{sanitize(gpu)}.json"


def done_marker(key: BuildKey, engine_hashes: dict[str, str]) -> dict:
    """Contents of BUILD_DONE.json, written last, once every stage of a build has passed."""
    return {
        "key": asdict(key),
        "engines": dict(engine_hashes),
        "triton_image": TRITON_IMAGE,
        "finished_unix": int(time.time()),
    }


def build_is_complete(paths: BuildPaths) -> bool:
    """True if BUILD_DONE matches the key, the artifacts match their manifest hashes, every
    engine matches its recorded sha256 and the repository exists."""
    from export.manifest import ManifestError, load_manifest

    marker = paths.root / BUILD_DONE
    if not marker.is_file() or not paths.repository.is_dir():
        return False
    data = json.loads(marker.read_text())
    if data.get("key") != asdict(paths.key) or not data.get("engines"):
        return False
    try:
        load_manifest(paths.artifacts, check_hashes=True)
    except ManifestError:
        return False
    plans = {name: paths.engines / f"{name}.plan" for name in data["engines"]}
    return all(p.is_file() and sha256(p) == data["engines"][n] for n, p in plans.items())


def write_json(path: Path, data: dict) -> None:
    """Write JSON through a temp file + rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def point_current(volume_root, paths: BuildPaths) -> Path:
    """Make ``paths`` the build served on its TensorRT version + GPU; return the pointer file."""
    pointer = pointer_path(volume_root, paths.key.model, paths.key.tensorrt, paths.key.gpu)
    relative = paths.root.relative_to(Path(str(volume_root)))
    write_json(pointer, {"key": asdict(paths.key), "directory": str(relative)})
    return pointer


def locate_build(volume_root, model: str, tensorrt: str, gpu: str) -> BuildPaths:
    """The finished build to serve for (model, TensorRT, GPU); BuildMissingError otherwise."""
    pointer = pointer_path(volume_root, model, tensorrt, gpu)
    hint = (
        f"run `modal run modal_triton.py::build` (it builds on {GPU} with TensorRT {TENSORRT_VERSION}); "
        "see docs/DEPLOY.md"
    )
    if not pointer.is_file():
        raise BuildMissingError(
            f"no build of {model} for TensorRT {tensorrt} on {gpu} in Volume {VOLUME_NAME!r} "
            f"({pointer} missing): {hint}"
        )
    data = json.loads(pointer.read_text())
    key = BuildKey(**data["key"])
    paths = BuildPaths(Path(str(volume_root)) / data["directory"], key)
    if (key.model, key.tensorrt, key.gpu) != (model, tensorrt, gpu) or not (paths.root / BUILD_DONE).is_file():
        raise BuildMissingError(f"{pointer} names an unfinished or different build ({key}): {hint}")
    return paths


def export_command(step: str, checkpoint: str, out: Path) -> list[str]:
    """``python -m export onnx|verify --model <checkpoint> --out <artifacts>`` (checkpoint: HF
    snapshot dir, local dir or "tiny"); verify writes the ONNX vs transformers parity report."""
    if step not in ("onnx", "verify"):
        raise ValueError(f"step must be 'onnx' or 'verify', got {step!r}")
    return [sys.executable, "-m", "export", step, "--model", str(checkpoint), "--out", str(out)]


def api_key() -> str:
    """The bearer token from the API secret; RuntimeError if the secret lacks it."""
    token = os.environ.get(API_KEY_ENV, "")
    if not token:
        raise RuntimeError(
            f"{API_KEY_ENV} is not set: create it with `modal secret create {API_SECRET_NAME} "
            f"{API_KEY_ENV}=<long random string>` (docs/DEPLOY.md)"
        )
    return token


# ---------------------------------------------------------------- build (GPU, export image)


def _fetch_checkpoint(model: str, revision: str) -> tuple[str, str]:
    """(checkpoint to export, resolved revision): "tiny"/local dirs as is, Hub ids via snapshot_download."""
    if model == "tiny" or Path(model).exists():
        return model, "local"
    from huggingface_hub import snapshot_download

    print(f"downloading {model}@{revision} into {HF_HOME} (cached on the Volume) ...", flush=True)
    path = snapshot_download(
        model, revision=revision, token=os.environ.get(HF_TOKEN_ENV), allow_patterns=list(HF_ALLOW_PATTERNS)
    )
    return path, Path(path).name  # .../snapshots/<commit sha>


def _artifacts_valid(artifacts: Path) -> bool:
    from export.manifest import ManifestError, load_manifest

    try:
        load_manifest(artifacts, check_hashes=True)
    except ManifestError as err:
        print(f"ONNX artifacts not reusable: {err}", flush=True)
        return False
    return True


def _export_onnx(checkpoint: str, artifacts: Path, force: bool) -> None:
    """``python -m export onnx`` then ``verify`` (ONNX Runtime vs transformers), each skipped when done."""
    from export.manifest import PARITY_NAME

    if force or not _artifacts_valid(artifacts):
        subprocess.run(export_command("onnx", checkpoint, artifacts), check=True, cwd="/root")
        (artifacts / PARITY_NAME).unlink(missing_ok=True)
        volume.commit()
    if not (artifacts / PARITY_NAME).is_file():
        subprocess.run(export_command("verify", checkpoint, artifacts), check=True, cwd="/root")
    print(f"ONNX artifacts and {PARITY_NAME} ready in {artifacts}", flush=True)


def _write_repository(paths: BuildPaths) -> Path:
    from export.repository import build_repository

    return build_repository(
        paths.artifacts,
        paths.repository,
        target="gpu",
        instances=TRITON_INSTANCES,
        engines_dir=paths.engines,
        orchestrator_params=ORCHESTRATOR_PARAMS,
    )


def build_report(paths: BuildPaths, records: dict[str, dict], onnx_parity) -> dict:
    """The parity/latency report stored as report.json beside a build."""
    keys = ("built_precision", "rules", "attempts", "precision", "build_seconds", "fp32_layers", "latency", "parity")
    engines = {name: {k: rec.get(k) for k in keys} for name, rec in records.items()}
    return {
        "key": asdict(paths.key),
        "triton_image": TRITON_IMAGE,
        "engines": engines,
        "onnx_vs_transformers": onnx_parity,
    }


def _run_build(model: str, revision: str, precision: str, force: bool) -> dict:
    from export import trt
    from export.manifest import PARITY_NAME

    gpu = trt.require_gpu()
    trt.check_tensorrt_version(trt.installed_tensorrt_version())
    checkpoint, resolved = _fetch_checkpoint(model, revision)
    volume.commit()
    paths = BuildPaths.of(VOLUME_ROOT, BuildKey(model, resolved, TENSORRT_VERSION, gpu))
    if not force and build_is_complete(paths):
        report = json.loads((paths.root / REPORT).read_text())
        print(f"build {paths.root} is complete and valid: nothing to do\n{format_report(report)}", flush=True)
        point_current(VOLUME_ROOT, paths)
        volume.commit()
        return report
    (paths.root / BUILD_DONE).unlink(missing_ok=True)  # servers refuse this build until it is complete again
    _export_onnx(checkpoint, paths.artifacts, force)
    volume.commit()
    result = trt.build_engines(paths.artifacts, paths.root / "engines", precision=precision or None, force=force)
    volume.commit()
    if result.engine_dir != paths.engines:
        raise RuntimeError(
            f"engines went to {result.engine_dir}, expected {paths.engines} (GPU/TensorRT changed mid-build?)"
        )
    _write_repository(paths)
    parity_file = paths.artifacts / PARITY_NAME
    report = build_report(paths, result.records, json.loads(parity_file.read_text()) if parity_file.is_file() else None)
    write_json(paths.root / REPORT, report)
    write_json(
        paths.root / BUILD_DONE, done_marker(paths.key, {n: r["engine_sha256"] for n, r in result.records.items()})
    )
    point_current(VOLUME_ROOT, paths)
    volume.commit()
    print(f"build complete: {paths.root}\n{format_report(report)}", flush=True)
    return report


@build_app.function(
    image=export_image,
    gpu=GPU,
    volumes={VOLUME_ROOT: volume},
    secrets=[hf_secret],
    timeout=BUILD_TIMEOUT_S,
    cpu=BUILD_CPU,
    memory=BUILD_MEMORY_MIB,
)
def build(model: str = MODEL_ID, revision: str = MODEL_REVISION, precision: str = "", force: bool = False) -> dict:
    """Export → TensorRT engines → parity vs ONNX Runtime → GPU repository, on the Volume.

    Idempotent: a complete, hash-valid build for (model, revision sha, TensorRT, GPU) is kept;
    a partial one resumes (valid ONNX artifacts and up-to-date engines are reused).
    ``model="tiny"`` builds a tiny random-weight model: a fast check of the whole pipeline.
    """
    return _run_build(model, revision, precision, force)


# ---------------------------------------------------------------- serving


def container_triton(repository: Path, dims) -> TritonServer:
    """server.triton.TritonServer for the NGC image: its binary and default backends, bound to all
    interfaces (Modal's web proxy connects from outside the loopback), with the CUDA memory pool
    sized from the spec at the model's ``dims`` (sam3_spec.Dims). Readiness wait, log tail and
    shutdown are TritonServer's; the command is the same server_command as the local server."""
    return TritonServer(
        repository,
        install=TritonInstall(Path(TRITON_BINARY), None),
        address=None,
        http_port=HTTP_PORT,
        grpc_port=GRPC_PORT,
        metrics_port=METRICS_PORT,
        log_path=Path("/tmp/tritonserver.log"),
        extra_args=cuda_pool_args(cuda_pool_bytes(dims)),
    )


def check_image_tensorrt() -> None:
    """RuntimeError if the image's libnvinfer differs from TENSORRT_VERSION (engines would not load)."""
    from export.trt import libnvinfer_version, same_tensorrt_release

    found = libnvinfer_version()
    if found is None:
        print(f"warning: no libnvinfer.so.X.Y.Z found to check against TensorRT {TENSORRT_VERSION}", flush=True)
    elif not same_tensorrt_release(found):
        raise RuntimeError(
            f"{TRITON_IMAGE} ships libnvinfer {found}, but engines are built with TensorRT "
            f"{TENSORRT_VERSION}: update TRITON_IMAGE/TENSORRT_VERSION together in export/trt/pins.py"
        )


@app.cls(
    image=serving_image,
    gpu=GPU,
    volumes={VOLUME_ROOT: volume},
    secrets=[api_secret],
    cpu=SERVE_CPU,
    memory=SERVE_MEMORY_MIB,
    timeout=REQUEST_TIMEOUT_S,
    startup_timeout=STARTUP_TIMEOUT_S,
    min_containers=MIN_CONTAINERS,
    max_containers=MAX_CONTAINERS,
    buffer_containers=BUFFER_CONTAINERS,
    scaledown_window=SCALEDOWN_WINDOW_S,
)
@modal.concurrent(max_inputs=MAX_INPUTS, target_inputs=TARGET_INPUTS)
class Sam3Triton:
    """tritonserver on this container's build; REST gateway, Triton HTTP, labeling, gRPC tunnel."""

    @modal.enter()
    def start_triton(self) -> None:
        from export.manifest import load_manifest
        from export.trt import check_torch_cuda, require_gpu

        check_image_tensorrt()
        check_torch_cuda()  # CudaDriverError: torch's wheel needs a newer driver than this container has
        self.paths = locate_build(VOLUME_ROOT, MODEL_ID, TENSORRT_VERSION, require_gpu(need_tensorrt=False))
        print(f"serving {self.paths.root}", flush=True)
        self.server = container_triton(self.paths.repository, load_manifest(self.paths.artifacts).dims)
        self.server.start()
        self.server.wait_ready(TRITON_READY_TIMEOUT_S)
        print(self.server.log_tail(40), flush=True)
        self.watchdog = Watchdog(self.server).start()  # reloads a dead stage, restarts a dead tritonserver
        self._client = None

    @modal.exit()
    def stop_triton(self) -> None:
        if getattr(self, "watchdog", None) is not None:
            self.watchdog.stop()
        if getattr(self, "server", None) is not None:
            self.server.stop()

    @modal.asgi_app()
    def gateway(self):
        """The seeds' REST contract (POST / and /segment); requires ``Authorization: Bearer <SAM3_API_KEY>``."""
        from server.gateway import create_app

        return create_app(f"localhost:{GRPC_PORT}", auth_token=api_key(), watchdog=self.watchdog)

    @modal.web_server(HTTP_PORT, startup_timeout=WEB_SERVER_STARTUP_S, requires_proxy_auth=True)
    def triton_http(self) -> None:
        """Triton's KServe v2 HTTP API (started in start_triton); Modal proxy auth required."""

    def _sam3(self):
        """The project's client (Sam3Client over gRPC) to this container's Triton, opened once."""
        if self._client is None:
            from client.api import Sam3Client

            self._client = Sam3Client(f"localhost:{GRPC_PORT}", "grpc", timeout_s=REQUEST_TIMEOUT_S - 30)
        return self._client

    @modal.method()
    def label(self, file_name: str, image_bytes: bytes, concepts: list[str], threshold: float = 0.5) -> dict:
        """Text-prompt one image; a label record (see record_from_segmentation) or {"file_name", "error"}."""
        from client.api import Sam3Error

        try:
            seg = self._sam3().text(image_bytes, clean_concepts(concepts), threshold=threshold)
        except Sam3Error as err:  # a bad image is reported per file, the run goes on
            return {"file_name": file_name, "error": err.message}
        return record_from_segmentation(file_name, seg)

    @modal.method()
    def grpc_tunnel(self, seconds: int = 540):
        """Yield a public TLS host:port for Triton gRPC, then keep it open ``seconds``.

        No auth at the Triton level: anyone who learns the (random, temporary) address can
        call it while it is open. For benchmarks and trusted clients only.
        """
        with modal.forward(GRPC_PORT, h2_enabled=True) as tunnel:
            host, port = tunnel.tls_socket
            yield f"{host}:{port}"
            time.sleep(max(1, min(int(seconds), REQUEST_TIMEOUT_S - 30)))


# ---------------------------------------------------------------- labeling helpers (pure)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


def clean_concepts(concepts: list[str]) -> list[str]:
    """Concepts stripped of surrounding spaces; ValueError when one is empty or not text."""
    if not concepts or not all(isinstance(c, str) and c.strip() for c in concepts):
        raise ValueError(f"concepts must be non-empty strings, got {concepts!r}")
    return [c.strip() for c in concepts]


def record_from_segmentation(file_name: str, seg) -> dict:
    """One image's labels from a client Segmentation: {"file_name", "height", "width", "concepts",
    "detections": [{"category": concept index, "score", "box": [x1,y1,x2,y2] px, "rle": COCO counts str}]}."""
    height, width = seg.image_shape
    dets = [
        {"category": int(c), "score": float(s), "box": [float(x) for x in b], "rle": r.decode()}
        for r, b, s, c in zip(seg.masks_rle, seg.boxes, seg.scores, seg.labels)
    ]
    return {
        "file_name": file_name,
        "height": int(height),
        "width": int(width),
        "concepts": list(seg.concepts),
        "detections": dets,
    }


def parse_concepts(text: str) -> list[str]:
    """ "person, red car" → ["person", "red car"]; ValueError when empty."""
    concepts = [c.strip() for c in text.split(",") if c.strip()]
    if not concepts:
        raise ValueError("give at least one concept, e.g. --text 'person,car'")
    return concepts


def list_images(folder: Path) -> list[tuple[str, Path]]:
    """(relative posix name, path) of every image under ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a directory of images")
    files = (p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    return sorted(((p.relative_to(folder).as_posix(), p) for p in files), key=lambda item: item[0])


def shard_path(shards: Path, file_name: str) -> Path:
    """Per-image result file: sanitized name + a short hash (distinct for a/b.jpg and a-b.jpg)."""
    digest = hashlib.sha1(file_name.encode()).hexdigest()[:10]
    return Path(shards) / f"{sanitize(file_name)}-{digest}.json"


def pending_images(images: list[tuple[str, Path]], shards: Path, concepts: list[str]) -> list[tuple[str, Path]]:
    """The images without a finished shard for these concepts (resuming skips the rest)."""

    def done(name: str) -> bool:
        path = shard_path(shards, name)
        return path.is_file() and json.loads(path.read_text()).get("concepts") == concepts

    return [item for item in images if not done(item[0])]


def coco_annotation(ann_id: int, image_id: int, record: dict, det: dict, n_categories: int) -> dict:
    """One COCO annotation (results format + iscrowd) from a detection of ``record``."""
    from pycocotools import mask as mask_utils

    if not 0 <= det["category"] < n_categories:
        raise ValueError(f"{record['file_name']}: concept index {det['category']} outside 0..{n_categories - 1}")
    rle = {"size": [record["height"], record["width"]], "counts": det["rle"]}
    x1, y1, x2, y2 = det["box"]
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": det["category"] + 1,
        "segmentation": rle,
        "area": float(mask_utils.area({**rle, "counts": det["rle"].encode()})),
        "bbox": [x1, y1, x2 - x1, y2 - y1],
        "score": det["score"],
        "iscrowd": 0,
    }


def coco_dataset(records: list[dict], concepts: list[str], description: str = "SAM 3 text-prompt labels") -> dict:
    """COCO instances dict (images, annotations with RLE masks / xywh boxes / scores, categories).

    records: label records (record_from_segmentation) made with these ``concepts``; image ids follow
    file_name order, category id = concept index + 1.
    """
    mismatched = [r["file_name"] for r in records if r.get("concepts", concepts) != concepts]
    if mismatched:
        raise ValueError(f"records labeled with other concepts than {concepts}: {mismatched[:5]}")
    images, annotations = [], []
    for image_id, rec in enumerate(sorted(records, key=lambda r: r["file_name"]), 1):
        images.append({"id": image_id, "file_name": rec["file_name"], "height": rec["height"], "width": rec["width"]})
        for det in rec["detections"]:
            annotations.append(coco_annotation(len(annotations) + 1, image_id, rec, det, len(concepts)))
    categories = [{"id": i + 1, "name": c, "supercategory": "concept"} for i, c in enumerate(concepts)]
    return {
        "info": {"description": description, "model": MODEL_ID},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


# ---------------------------------------------------------------- smoke / bench / verify helpers (pure)


def smoke_requests(image_b64: str, width: int, height: int, text: str) -> dict[str, dict]:
    """One gateway request per mode (the seeds' JSON contract), prompts placed inside the image."""
    box = [width * 0.25, height * 0.25, width * 0.75, height * 0.75]
    return {
        "text": {"image": image_b64, "mode": "text", "text": text},
        "point": {"image": image_b64, "mode": "point", "point_coords": [[width / 2, height / 2]], "point_labels": [1]},
        "box": {"image": image_b64, "mode": "box", "box_coords": box},
        "auto": {"image": image_b64, "mode": "auto", "points_per_batch": 64},
    }


RESPONSE_KEYS = {
    "text": ("masks", "boxes", "scores", "count", "image_shape"),
    "point": ("mask", "score", "all_scores", "image_shape"),
    "box": ("mask", "score", "all_scores", "image_shape"),
    "auto": ("masks", "count", "image_shape"),
}


def summarize_response(mode: str, body: dict, height: int, width: int) -> str:
    """One line about a gateway response; ValueError if it breaks the seeds' contract."""
    missing = [k for k in RESPONSE_KEYS[mode] if k not in body]
    if missing:
        raise ValueError(f"{mode} response lacks {missing}: {str(body)[:300]}")
    if list(body["image_shape"]) != [height, width]:
        raise ValueError(f"{mode} response image_shape {body['image_shape']} != [{height}, {width}]")
    if mode in ("point", "box"):
        return f"{mode}: score {body['score']:.3f}, {len(body['all_scores'])} candidates"
    return f"{mode}: {body['count']} masks"


def bench_command(url: str, args: str = "") -> list[str]:
    """``python -m bench --url URL <args>`` (the project's benchmark CLI)."""
    return [sys.executable, "-m", "bench", "--url", url, *shlex.split(args)]


def format_report(report: dict) -> str:
    """Human-readable parity/latency table of a build report (report.json)."""
    lines = [f"build: {report['key']}", "engine vs ONNX Runtime:"]
    for name, eng in report["engines"].items():
        rows = eng.get("parity") or []
        worst = min(rows, key=lambda r: r["cosine"]) if rows else None
        lat = eng.get("latency") or {}
        status = "ok" if all(r["ok"] for r in rows) else "FAIL"
        label = eng.get("built_precision", "?") + (f"/{eng['rules']}" if eng.get("rules") not in (None, "none") else "")
        lines.append(
            f"  {name:<8} {label:<5} {status:<4} "
            + (f"min cosine {worst['cosine']:.6f} ({worst['output']} @ {worst['sizes']}) " if worst else "")
            + (f"p50 {lat['p50_ms']:.2f} ms p90 {lat['p90_ms']:.2f} ms" if lat else "")
        )
    onnx = report.get("onnx_vs_transformers")
    lines.append("ONNX Runtime vs transformers: " + ("not recorded" if onnx is None else _onnx_summary(onnx)))
    return "\n".join(lines)


def _onnx_summary(report) -> str:
    """Summary of export.pipeline's parity_report.json ({"checks": [{..., "max_abs", "ok"}]})."""
    rows = report if isinstance(report, list) else report.get("checks", [])
    bad = [r for r in rows if not r.get("ok", True)]
    worst = max((r.get("max_abs", 0.0) for r in rows), default=0.0)
    return f"{len(rows)} checks, {len(bad)} failing, worst max_abs {worst:.2e}"


def report_ok(report: dict) -> bool:
    """True if every engine parity row passed."""
    return all(r["ok"] for eng in report["engines"].values() for r in (eng.get("parity") or []))


# ---------------------------------------------------------------- verify = gpu-check (GPU, Triton image)

VERIFY_MODELS = ("bench", "full", "served")


def gpu_check_options(model: str, served_root: Path | None = None):
    """server.gpu_check Options of ::verify: bench/full export into the Volume, or the served build's
    artifacts and engines (``served_root``: its BuildPaths.root)."""
    from server.gpu_check.run import Options

    if model not in VERIFY_MODELS:
        raise ValueError(f"--model must be one of {VERIFY_MODELS}, got {model!r}")
    work = Path(str(GPU_CHECK_DIR)) / model
    if model == "served":
        return Options(
            model="full",
            work=work,
            artifacts=Path(served_root) / "artifacts",
            engines=Path(served_root) / "engines",
            install=False,
        )
    return Options(model=model, work=work, install=False)


@build_app.function(
    image=gpu_check_image,
    gpu=GPU,
    volumes={VOLUME_ROOT: volume},
    timeout=VERIFY_TIMEOUT_S,
    cpu=BUILD_CPU,
    memory=BUILD_MEMORY_MIB,
)
def gpu_check(model: str = "bench") -> dict:
    """``sam3-triton gpu-check`` on this H200 (same code: server.gpu_check.run); returns its report."""
    from export import trt
    from server.gpu_check.run import run_gpu_check

    served = (
        locate_build(VOLUME_ROOT, MODEL_ID, TENSORRT_VERSION, trt.require_gpu()).root if model == "served" else None
    )
    report = run_gpu_check(gpu_check_options(model, served), log=lambda m: print(m, flush=True))
    volume.commit()
    return report


# ---------------------------------------------------------------- local entrypoints


def _deployed():
    """A handle on the deployed Sam3Triton (``modal deploy modal_triton.py`` first)."""
    return modal.Cls.from_name(APP_NAME, "Sam3Triton")()


def _local_api_key() -> str:
    token = os.environ.get(API_KEY_ENV, "")
    if not token:
        raise SystemExit(f"export {API_KEY_ENV}=<the value stored in the {API_SECRET_NAME!r} Modal secret>")
    return token


@app.local_entrypoint()
def smoke(image: str, text: str = "person", url: str = "") -> None:
    """Every mode once against the deployed gateway, plus one unauthenticated request (must be 401/403)."""
    import httpx
    from PIL import Image

    url = url or _deployed().gateway.get_web_url()
    data = Path(image).read_bytes()
    width, height = Image.open(Path(image)).size
    headers = {"Authorization": f"Bearer {_local_api_key()}"}
    with httpx.Client(timeout=REQUEST_TIMEOUT_S) as http:
        for mode, payload in smoke_requests(base64.b64encode(data).decode(), width, height, text).items():
            start = time.perf_counter()
            response = http.post(url, json=payload, headers=headers)
            if response.status_code != 200:
                raise SystemExit(f"{mode}: HTTP {response.status_code}: {response.text[:500]}")
            print(
                f"{summarize_response(mode, response.json(), height, width)} "
                f"({time.perf_counter() - start:.2f} s incl. network)"
            )
        denied = http.post(url, json={"image": "", "mode": "text", "text": text})
    if denied.status_code not in (401, 403):
        raise SystemExit(f"a request without the bearer token got HTTP {denied.status_code}, expected 401/403")
    print(f"unauthenticated request refused ({denied.status_code}); smoke passed for {url}")


@app.local_entrypoint()
def bench(url: str = "", args: str = "") -> None:
    """Run ``python -m bench`` against the deployed gateway (extra CLI flags in --args)."""
    url = url or _deployed().gateway.get_web_url()
    command = bench_command(url, args)
    print("running:", shlex.join(command))
    env = {**os.environ, API_KEY_ENV: _local_api_key()}
    code = subprocess.run(command, cwd=REPO_ROOT, env=env).returncode
    if code:
        raise SystemExit(code)


@build_app.local_entrypoint()
def verify(model: str = "bench", out: str = "gpu-check.json") -> None:
    """gpu-check on an H200: engines, parity vs ONNX Runtime, stage and end-to-end latency.

    model: bench | full (random weights, exported on the GPU container) | served (the build
    ``::build`` made for facebook/sam3). Prints the table, writes the JSON report locally.
    """
    from server.gpu_check.report import format_table, write_report

    gpu_check_options(model)  # refuse a bad --model before starting a container
    report = gpu_check.remote(model)
    print(format_table(report))
    print(f"report written to {write_report(Path(out), report)}")
    if not report["ok"]:
        raise SystemExit("gpu-check failed: " + "; ".join(report["problems"]))


@app.local_entrypoint()
def tunnel(seconds: int = 540) -> None:
    """Print a public gRPC address (TLS) of one serving container and keep it open ``seconds``."""
    for address in _deployed().grpc_tunnel.remote_gen(seconds):
        print(
            f"Triton gRPC at {address} (TLS) for ~{seconds} s, e.g. "
            f"tritonclient.grpc.InferenceServerClient('{address}', ssl=True)",
            flush=True,
        )


class _Progress:
    """Prints done/total, rate and ETA at most every ``every_s`` seconds (and at the end)."""

    def __init__(self, total: int, every_s: float = 5.0):
        self.total, self.every_s, self.done = total, every_s, 0
        self.start = self.last = time.monotonic()

    def step(self, note: str = "") -> None:
        self.done += 1
        now = time.monotonic()
        if now - self.last >= self.every_s or self.done == self.total:
            rate = self.done / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate else float("inf")
            print(f"[{self.done}/{self.total}] {rate:.2f} img/s, ETA {eta:.0f} s {note}", flush=True)
            self.last = now


def _label_all(todo, shards: Path, concepts: list[str], threshold: float) -> list[str]:
    """Fan ``todo`` out over serving containers; write one shard per image; return error lines."""
    args = ((name, path.read_bytes(), concepts, threshold) for name, path in todo)
    progress, errors = _Progress(len(todo)), []
    for result in _deployed().label.starmap(args, order_outputs=False, return_exceptions=True):
        if isinstance(result, BaseException):
            errors.append(f"container error: {result!r}")
        elif "error" in result:
            errors.append(f"{result['file_name']}: {result['error']}")
        else:
            write_json(shard_path(shards, result["file_name"]), result)
        progress.step(f"({len(errors)} errors)")
    return errors


@app.local_entrypoint()
def segment_dataset(images: str, text: str, out: str = "sam3_coco.json", threshold: float = 0.5) -> None:
    """Label a folder of images with text concepts on the deployed app; write COCO JSON.

    Resumable: each finished image is a shard in <out>.shards/; a rerun skips those.
    """
    concepts, files = parse_concepts(text), list_images(Path(images))
    shards = Path(out).with_suffix(".shards")
    todo = pending_images(files, shards, concepts)
    print(
        f"{len(files)} images, {len(files) - len(todo)} already labeled, {len(todo)} to label "
        f"on up to {MAX_CONTAINERS} {GPU} containers"
    )
    errors = _label_all(todo, shards, concepts, threshold) if todo else []
    records = [
        r
        for r in (
            json.loads(shard_path(shards, name).read_text()) for name, _ in files if shard_path(shards, name).is_file()
        )
        if r.get("concepts") == concepts
    ]
    write_json(Path(out), coco_dataset(records, concepts))
    print(f"wrote {out}: {len(records)} images, {sum(len(r['detections']) for r in records)} annotations")
    if errors:
        raise SystemExit(f"{len(errors)} image(s) failed (rerun to retry them):\n" + "\n".join(errors[:20]))
