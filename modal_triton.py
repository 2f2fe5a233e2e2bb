"""SAM 3 on NVIDIA Triton + TensorRT on a Modal H200: build once, then serve.

    modal run modal_triton.py::build                    # export → TensorRT → parity → repository (Volume)
    modal deploy modal_triton.py                        # REST gateway + Triton HTTP (+ gRPC tunnel on demand)
    modal run modal_triton.py::smoke --image photo.jpg --text person
    modal run modal_triton.py::bench --args "--concurrency 8"
    modal run modal_triton.py::verify [--model bench|full|served]   # = sam3-triton gpu-check on an H200
    modal run modal_triton.py::probe                    # the GPU checks that need only torch (no engines)
    modal run modal_triton.py::segment_dataset --images ./photos --text "person,dog" --out coco.json
    modal run modal_triton.py::tunnel                   # public gRPC address of a serving container

Everything is keyed so that a stale engine is never served: a build lives in
``/vol/builds/<model>/<revision sha>/trt-<TensorRT>/<GPU>/`` and the serving container only
starts from the build recorded for ITS TensorRT version and GPU name. See docs/DEPLOY.md.

Two apps: ``app`` (deployed: the serving class and the client entrypoints) and ``build_app``
(``::build``, ``::verify`` and ``::probe``). ``modal run`` creates every object of the runnable's app, so
keeping them apart means building never needs the ``sam3-api-key`` secret nor the serving
image, and serving never needs the Hugging Face secret.

This file is the app: settings, images, Volume, secrets, functions, entrypoints. Its pure helpers
(build layout and markers, image steps, labelling and COCO assembly, smoke/report checks) live in
the ``deploy`` package, run without Modal credentials and are unit-tested (tests/test_modal_app.py).
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import subprocess
import time
from pathlib import Path, PurePosixPath

import modal

from client.api import Sam3Client, Sam3Error
from deploy.builds import (
    BUILD_DONE,
    REPORT,
    BuildKey,
    BuildMissingError,
    BuildPaths,
    build_is_complete,
    build_report,
    done_marker,
    export_command,
    locate_build,
    point_current,
    write_json,
)
from deploy.checks import (
    bench_command,
    check_verify_model,
    format_report,
    gpu_check_options,
    smoke_requests,
    summarize_response,
)
from deploy.images import TRITON_SETUP, pip_steps
from deploy.labels import (
    Progress,
    clean_concepts,
    coco_dataset,
    list_images,
    parse_concepts,
    pending_images,
    record_from_segmentation,
    shard_path,
)
from export import trt
from export.manifest import PARITY_NAME, ManifestError, load_manifest
from export.repository import build_repository
from export.trt import (
    EXPORT_PACKAGES,
    GPU_CHECK_PACKAGES,
    SERVING_PACKAGES,
    TENSORRT_VERSION,
    TRITON_BINARY,
    TRITON_IMAGE,
    libnvinfer_version,
    same_tensorrt_release,
)
from sam3_spec import SAM3_INPUTS
from server.gpu_check.run import run_gpu_check
from server.triton import TritonInstall, TritonServer, cuda_pool_args, cuda_pool_bytes
from server.watchdog import Watchdog

# The helpers live in deploy/; these names are part of the app's surface (scripts and tests use them).
__all__ = ["BUILD_DONE", "REPORT", "BuildKey", "BuildMissingError", "BuildPaths", "app", "build_app"]

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
TEXT_THRESHOLD = next(t.default for t in SAM3_INPUTS if t.name == "threshold")  # the served default
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
PROBE_TIMEOUT_S = 900  # torch_probe: ~80 s on an H200 once the image is up
GPU_CHECK_DIR = VOLUME_ROOT / "gpu-check"  # gpu-check's exports and engines, kept between ::verify runs

# Packages (pins: export/trt/pins.py). Serving: the orchestrator (numpy, pillow, tokenizers,
# pycocotools, OpenCV; torch only for the GPU post-processing of DLPack tensors), the gateway and the
# client it uses. Export/build: torch + transformers + the pinned TensorRT. gpu-check: both.
PROJECT_PACKAGES = ("sam3_spec", "export", "server", "client", "bench", "deploy")  # sam3_spec: the contract module
REPO_ROOT = Path(__file__).resolve().parent

# ---------------------------------------------------------------- images, volume, secrets, app


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
    from huggingface_hub import snapshot_download  # noqa: PLC0415 (only in the export image)

    print(f"downloading {model}@{revision} into {HF_HOME} (cached on the Volume) ...", flush=True)
    path = snapshot_download(
        model, revision=revision, token=os.environ.get(HF_TOKEN_ENV), allow_patterns=list(HF_ALLOW_PATTERNS)
    )
    return path, Path(path).name  # .../snapshots/<commit sha>


def _artifacts_valid(artifacts: Path) -> bool:
    try:
        load_manifest(artifacts, check_hashes=True)
    except ManifestError as err:
        print(f"ONNX artifacts not reusable: {err}", flush=True)
        return False
    return True


def _export_onnx(checkpoint: str, artifacts: Path, force: bool) -> None:
    """``python -m export onnx`` then ``verify`` (ONNX Runtime vs transformers), each skipped when done."""
    if force or not _artifacts_valid(artifacts):
        subprocess.run(export_command("onnx", checkpoint, artifacts), check=True, cwd="/root")
        (artifacts / PARITY_NAME).unlink(missing_ok=True)
        volume.commit()
    if not (artifacts / PARITY_NAME).is_file():
        subprocess.run(export_command("verify", checkpoint, artifacts), check=True, cwd="/root")
    print(f"ONNX artifacts and {PARITY_NAME} ready in {artifacts}", flush=True)


def _write_repository(paths: BuildPaths) -> Path:
    return build_repository(
        paths.artifacts,
        paths.repository,
        target="gpu",
        instances=TRITON_INSTANCES,
        engines_dir=paths.engines,
        orchestrator_params=ORCHESTRATOR_PARAMS,
    )


def _run_build(model: str, revision: str, precision: str, force: bool) -> dict:
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
        check_image_tensorrt()
        trt.check_torch_cuda()  # CudaDriverError: torch's wheel needs a newer driver than this container has
        self.paths = locate_build(VOLUME_ROOT, MODEL_ID, TENSORRT_VERSION, trt.require_gpu(need_tensorrt=False))
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
        from server.gateway import create_app  # noqa: PLC0415 (serve extra: only in the serving image)

        return create_app(f"localhost:{GRPC_PORT}", auth_token=api_key(), watchdog=self.watchdog)

    @modal.web_server(HTTP_PORT, startup_timeout=WEB_SERVER_STARTUP_S, requires_proxy_auth=True)
    def triton_http(self) -> None:
        """Triton's KServe v2 HTTP API (started in start_triton); Modal proxy auth required."""

    def _sam3(self):
        """The project's client (Sam3Client over gRPC) to this container's Triton, opened once."""
        if self._client is None:
            self._client = Sam3Client(f"localhost:{GRPC_PORT}", "grpc", timeout_s=REQUEST_TIMEOUT_S - 30)
        return self._client

    @modal.method()
    def label(self, file_name: str, image_bytes: bytes, concepts: list[str], threshold: float = TEXT_THRESHOLD) -> dict:
        """Text-prompt one image; a label record (see record_from_segmentation) or {"file_name", "error"}."""
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


# ---------------------------------------------------------------- verify = gpu-check (GPU, Triton image)


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
    served = (
        locate_build(VOLUME_ROOT, MODEL_ID, TENSORRT_VERSION, trt.require_gpu()).root if model == "served" else None
    )
    report = run_gpu_check(gpu_check_options(model, GPU_CHECK_DIR, served), log=lambda m: print(m, flush=True))
    volume.commit()
    return report


@build_app.function(image=gpu_check_image, gpu=GPU, timeout=PROBE_TIMEOUT_S)
def torch_probe(stages: bool = True) -> dict:
    """``python -m server.gpu_check.torch_probe`` on this H200 (no engines, no Triton): the gpu target's
    post-processing against the CPU path, transformers' vision batching and text reference, and with
    ``stages`` our five exported stages and the orchestrator on them, in eager torch. Returns its report."""
    from server.gpu_check import torch_probe as probe  # noqa: PLC0415 (runs in the container)

    return probe.run_probe(probe.parse_args(["--stages", "--serving"] if stages else []))


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
    import httpx  # noqa: PLC0415 (serve extra; `modal run` needs only modal)
    from PIL import Image  # noqa: PLC0415 (`modal run` needs only modal)

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
def bench(args: str = "--no-reference", seconds: int = 540) -> None:
    """Run ``python -m bench`` here against one serving container, over a gRPC tunnel (TLS) kept open
    ``seconds`` (at most REQUEST_TIMEOUT_S - 30: size --repeats to fit). Extra CLI flags in --args."""
    for address in _deployed().grpc_tunnel.remote_gen(seconds):
        command = bench_command(address, args)
        print("running:", shlex.join(command), flush=True)
        code = subprocess.run(command, cwd=REPO_ROOT).returncode
        if code:
            raise SystemExit(code)
        return


@build_app.local_entrypoint()
def verify(model: str = "bench", out: str = "gpu-check.json") -> None:
    """gpu-check on an H200: engines, parity vs ONNX Runtime, stage and end-to-end latency.

    model: bench | full (random weights, exported on the GPU container) | served (the build
    ``::build`` made for facebook/sam3). Prints the table, writes the JSON report locally.
    """
    from server.gpu_check.report import format_table, write_report  # noqa: PLC0415 (only ::verify)

    check_verify_model(model)  # refuse a bad --model before starting a container
    report = gpu_check.remote(model)
    print(format_table(report))
    print(f"report written to {write_report(Path(out), report)}")
    if not report["ok"]:
        raise SystemExit("gpu-check failed: " + "; ".join(report["problems"]))


@build_app.local_entrypoint()
def probe(stages: bool = True, out: str = "torch-probe.json") -> None:
    """The GPU checks that need only PyTorch, on an H200 (minutes; no engines): prints the tables,
    writes the JSON report locally, fails when the device post-processing disagrees with the CPU's."""
    from server.gpu_check.torch_probe import format_report  # noqa: PLC0415 (only ::probe)

    report = torch_probe.remote(stages)
    print(format_report(report))
    Path(out).write_text(json.dumps(report, indent=2))
    print(f"report written to {out}")
    if not report["ok"]:
        raise SystemExit("torch probe: the device post-processing disagrees with the CPU path (see the table)")


@app.local_entrypoint()
def tunnel(seconds: int = 540) -> None:
    """Print a public gRPC address (TLS) of one serving container and keep it open ``seconds``."""
    for address in _deployed().grpc_tunnel.remote_gen(seconds):
        print(
            f"Triton gRPC at {address} (TLS) for ~{seconds} s, e.g. "
            f"tritonclient.grpc.InferenceServerClient('{address}', ssl=True)",
            flush=True,
        )


def _label_all(todo, shards: Path, concepts: list[str], threshold: float) -> list[str]:
    """Fan ``todo`` out over serving containers; write one shard per image; return error lines."""
    args = ((name, path.read_bytes(), concepts, threshold) for name, path in todo)
    progress, errors = Progress(len(todo)), []
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
def segment_dataset(images: str, text: str, out: str = "sam3_coco.json", threshold: float = TEXT_THRESHOLD) -> None:
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
    write_json(Path(out), coco_dataset(records, concepts, MODEL_ID))
    print(f"wrote {out}: {len(records)} images, {sum(len(r['detections']) for r in records)} annotations")
    if errors:
        raise SystemExit(f"{len(errors)} image(s) failed (rerun to retry them):\n" + "\n".join(errors[:20]))
