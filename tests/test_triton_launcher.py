"""The real bundled tritonserver serving a generated cpu repository (server/triton.py).

One server (module scope) serves the four component models built from fake ONNX graphs
(tests/test_repository.py); every result is compared with the same graph run directly in
ONNX Runtime. All traffic is on 127.0.0.1 with free ports; every wait is bounded.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from test_repository import TINY, make_fake_artifacts  # tests/ is on sys.path (pytest prepend import mode)
from tritonclient.utils import InferenceServerException

from export.pbtxt import to_pbtxt
from export.repository import build_repository
from sam3_spec import NP_DTYPES, Dims, component_specs
from server.triton import (
    SHM_DIR,
    TritonNotFoundError,
    TritonServer,
    TritonStartError,
    cuda_pool_args,
    cuda_pool_bytes,
    find_tritonserver,
    free_port,
    ports_in_use,
    python3_dir,
    server_command,
    server_env,
)
from tests.pbtxt import parse_config_text

COMPONENTS = ["vision", "text", "concept", "prompt"]
ROOT = Path(__file__).resolve().parents[1]
SPECS = component_specs(TINY)
TEXT_QUEUE_DELAY_US = 300_000  # long enough that concurrent requests are batched together
TIMEOUT_S = 60

pytestmark = pytest.mark.timeout(300)


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    return make_fake_artifacts(tmp_path_factory.mktemp("artifacts"))


def _slow_text_batching(repo: Path) -> None:
    """Raise sam3_text's queue delay so concurrent requests land in one execute() call."""
    path = repo / "sam3_text" / "config.pbtxt"
    config = parse_config_text(path.read_text())
    config["dynamic_batching"]["max_queue_delay_microseconds"] = TEXT_QUEUE_DELAY_US
    path.write_text(to_pbtxt(config))


@pytest.fixture(scope="module")
def server(artifacts, tmp_path_factory):
    repo = build_repository(
        artifacts,
        tmp_path_factory.mktemp("served") / "repo",
        "cpu",
        models=COMPONENTS,
        intra_op_threads=1,
        precision="fp32",
    )
    _slow_text_batching(repo)
    with TritonServer(repo, ready_timeout_s=180) as running:
        yield running


def reference(artifacts: Path, component: str, feeds: dict) -> list[np.ndarray]:
    """The component's graph run directly in ONNX Runtime (outputs in spec order)."""
    spec = SPECS[component]
    session = ort.InferenceSession(str(artifacts / spec.onnx_file), providers=["CPUExecutionProvider"])
    return session.run([t.name for t in spec.outputs], feeds)


def random_feeds(component: str, sizes: dict, seed: int = 0) -> dict:
    """Random inputs of one component at the given dynamic-axis sizes (spec dtypes)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for t in SPECS[component].inputs:
        shape, dtype = t.resolve(sizes), np.dtype(NP_DTYPES[t.dtype])
        feeds[t.name] = (
            rng.random(shape) > 0.5
            if dtype.kind == "b"
            else rng.integers(0, 255, shape).astype(dtype)
            if dtype.kind in "iu"
            else rng.standard_normal(shape).astype(dtype)
        )
    return feeds


def inputs_for(module, component: str, feeds: dict) -> list:
    """tritonclient InferInput list (http or grpc module) holding ``feeds``."""
    spec = SPECS[component]
    out = []
    for name, array in feeds.items():
        infer_input = module.InferInput(name, list(array.shape), spec.tensor(name).dtype)
        infer_input.set_data_from_numpy(array)
        out.append(infer_input)
    return out


@pytest.fixture
def client(server):
    """HTTP client of the module server (closed after the test so shutdown is not held up)."""
    http = httpclient.InferenceServerClient(
        server.http_address, connection_timeout=TIMEOUT_S, network_timeout=TIMEOUT_S, concurrency=8
    )
    yield http
    http.close()


def assert_outputs(result, component: str, expected: list) -> None:
    for t, want in zip(SPECS[component].outputs, expected):
        got = result.as_numpy(t.name)
        assert got.shape == want.shape and got.dtype == want.dtype, t.name
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=t.name)


# ---------------------------------------------------------------- launcher pieces (no server)


def test_find_tritonserver_assembles_backend_dir():
    first, second = find_tritonserver(), find_tritonserver()
    assert first == second and os.access(first.binary, os.X_OK)
    python_dir = first.backend_dir / "python"
    assert (python_dir / "libtriton_python.so").is_file()
    assert os.access(python_dir / "triton_python_backend_stub", os.X_OK)
    assert (python_dir / "triton_python_backend_utils.py").is_file()
    assert any(p.name.startswith("libtritonserver") for p in first.lib_dirs[0].iterdir())


def test_server_command_flags():
    local = server_command(
        Path("/r"),
        binary="/b/tritonserver",
        backend_dir="/be",
        http_port=1,
        grpc_port=2,
        metrics_port=3,
        address="127.0.0.1",
        extra_args=["--log-info=false"],
        shm_prefix="sam3_x_",
    )
    assert local[0] == "/b/tritonserver" and local[-1] == "--log-info=false"
    for flag in (
        "--model-repository=/r",
        "--http-port=1",
        "--grpc-port=2",
        "--metrics-port=3",
        "--backend-directory=/be",
        "--allow-metrics=true",
        "--strict-readiness=true",
        "--exit-on-error=true",
        "--model-control-mode=none",
        "--http-address=127.0.0.1",
        "--backend-config=python,shm-region-prefix-name=sam3_x_",
    ):
        assert flag in local
    ngc = server_command(Path("/models"))
    assert ngc[0] == "tritonserver" and not any(
        a.startswith(("--backend-directory", "--http-address", "--backend-config")) for a in ngc
    )
    with pytest.raises(ValueError, match="model_control"):
        server_command(Path("/r"), model_control="sometimes")


def test_server_env_puts_venv_first():
    install = find_tritonserver()
    env = server_env(install, base={"PATH": "/usr/bin", "LD_LIBRARY_PATH": "/opt/lib"})
    assert env["PATH"].split(os.pathsep)[:2] == [str(Path(sys.executable).parent), "/usr/bin"]
    assert env["LD_LIBRARY_PATH"].split(os.pathsep) == [str(install.lib_dirs[0]), "/opt/lib"]


def fake_python_only_env(root: Path) -> Path:
    """A venv whose bin/ holds only ``python`` (like the NGC image's /usr/local/bin): a copy of this
    venv's pyvenv.cfg, its lib/ linked in, bin/python linked to the base interpreter. Returns bin/python."""
    venv = Path(sys.prefix)
    (root / "bin").mkdir(parents=True)
    (root / "pyvenv.cfg").write_text((venv / "pyvenv.cfg").read_text())
    (root / "lib").symlink_to(venv / "lib")
    (root / "bin" / "python").symlink_to(Path(sys.executable).resolve())
    return root / "bin" / "python"


def test_python3_shim_where_only_python_exists(tmp_path):
    python = fake_python_only_env(tmp_path / "env")
    assert [p.name for p in python.parent.iterdir()] == ["python"]
    env = {"PATH": "/usr/bin:/bin", "SAM3_TRITON_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    code = (
        "import subprocess; from server.triton import find_tritonserver, server_env; "
        "env = server_env(find_tritonserver()); "
        "print(subprocess.run(['python3', '-c', 'import os, numpy; print(os.path.realpath(numpy.__file__))'], "
        "env=env, capture_output=True, text=True, check=True).stdout.strip())"
    )
    result = subprocess.run([str(python), "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == os.path.realpath(np.__file__)  # python3 on PATH sees this venv's packages


def test_python3_dir_prefers_the_interpreters_own_python3(tmp_path, monkeypatch):
    monkeypatch.setenv("SAM3_TRITON_CACHE", str(tmp_path / "cache"))
    assert python3_dir() == Path(sys.executable).parent  # a venv's bin has python3
    python = fake_python_only_env(tmp_path / "env")
    shim = python3_dir(str(python), str(tmp_path / "env"))
    assert shim.parent.parent == tmp_path / "cache" / "python3-shim" and shim.name == "bin"
    assert (shim / "python3").resolve() == python.resolve()
    assert (shim.parent / "pyvenv.cfg").read_text() == (tmp_path / "env" / "pyvenv.cfg").read_text()
    assert python3_dir(str(python), str(tmp_path / "env")) == shim  # idempotent
    system = python3_dir(str(tmp_path / "usr" / "bin" / "python"), str(tmp_path / "usr"))  # no venv: no pyvenv.cfg
    assert not (system.parent / "pyvenv.cfg").exists()


def test_tritonserver_runs_python_models_where_only_python_exists(artifacts, tmp_path):
    """The real bundled tritonserver started from an interpreter whose dir has no python3:
    its Python backend stub finds this environment through the shim and loads a model."""
    python = fake_python_only_env(tmp_path / "env")
    repo = build_repository(artifacts, tmp_path / "repo", "cpu", models=["text"], intra_op_threads=1)
    code = (
        "import sys; from pathlib import Path; from server.triton import TritonServer; "
        "s = TritonServer(Path(sys.argv[1]), ready_timeout_s=150); s.__enter__(); "
        "print('READY', s.is_ready(), flush=True); s.stop()"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "SAM3_TRITON_CACHE": str(tmp_path / "cache"),
        "PYTHONPATH": str(ROOT),
        "HOME": str(tmp_path),
    }
    result = subprocess.run([str(python), "-c", code, str(repo)], env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0 and "READY True" in result.stdout, result.stderr[-3000:]


REAL = Dims(image_size=1008, patch=14, hidden=256, queries=200, text_hidden=1024)


def test_cuda_pool_flag_sized_from_the_spec():
    specs = component_specs(REAL)
    largest_tensor = max(
        int(np.prod(t.resolve(spec.sizes("max")))) * np.dtype(NP_DTYPES[t.dtype]).itemsize
        for spec in specs.values()
        for t in spec.inputs + spec.outputs
    )
    pool = cuda_pool_bytes(REAL)
    assert pool % (1 << 20) == 0 and pool >= 2 * largest_tensor > 2 * 85 * 2**20  # fpn_0 alone is 85 MB
    assert cuda_pool_bytes(TINY) < pool / 100  # follows the model's dims
    assert cuda_pool_bytes(REAL, headroom=1.0) < pool
    command = server_command(Path("/r"), cuda_pool_bytes=pool)
    assert command.count(f"--cuda-memory-pool-byte-size=0:{pool}") == 1
    assert not any(a.startswith("--cuda-memory-pool") for a in server_command(Path("/r")))
    assert cuda_pool_args(5, gpu=1) == ["--cuda-memory-pool-byte-size=1:5"]
    with pytest.raises(ValueError, match="≥ 0"):
        cuda_pool_args(-1)


def test_missing_repository_is_a_start_error(tmp_path):
    with pytest.raises(TritonStartError, match="not a directory"):
        TritonServer(tmp_path / "absent").start()
    assert isinstance(free_port(), int)
    assert issubclass(TritonNotFoundError, RuntimeError)


# ---------------------------------------------------------------- the running server


def test_server_ready_with_all_components(server, client):
    assert client.is_server_ready()
    for name in COMPONENTS:
        assert client.is_model_ready(f"sam3_{name}")
    with urllib.request.urlopen(server.metrics_url, timeout=TIMEOUT_S) as response:
        assert b"nv_inference_request_success" in response.read()


def test_http_inference_matches_onnxruntime(client, artifacts):
    feeds = random_feeds("vision", {"batch": 2})
    result = client.infer("sam3_vision", inputs_for(httpclient, "vision", feeds))
    assert_outputs(result, "vision", reference(artifacts, "vision", feeds))


def test_grpc_inference_matches_onnxruntime(server, artifacts):
    feeds = random_feeds("concept", {"prompts": 2, "boxes": 3})
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        result = grpc.infer("sam3_concept", inputs_for(grpcclient, "concept", feeds), client_timeout=TIMEOUT_S)
    finally:
        grpc.close()
    assert_outputs(result, "concept", reference(artifacts, "concept", feeds))


def test_dynamic_batching_returns_each_request_its_rows(client, artifacts):
    feeds = [random_feeds("text", {"batch": n}, seed=n) for n in (1, 3, 2, 1)]
    pending = [client.async_infer("sam3_text", inputs_for(httpclient, "text", f)) for f in feeds]
    for f, request in zip(feeds, pending):
        assert_outputs(request.get_result(timeout=TIMEOUT_S), "text", reference(artifacts, "text", f))


def test_a_second_server_on_the_same_ports_refuses_to_start(server, tmp_path):
    """Another tritonserver on our ports would answer our readiness checks while ours exits on its bind
    error (``serve`` then proxied to it and its watchdog "restarted" ours every few seconds): refused first."""
    clash = TritonServer(
        server.repo, http_port=server.http_port, grpc_port=server.grpc_port, metrics_port=server.metrics_port
    )
    with pytest.raises(TritonStartError, match=f"{server.http_port}, {server.grpc_port}, {server.metrics_port}"):
        clash.start()
    assert clash.pid is None and server.is_ready()
    assert ports_in_use([server.http_port, free_port()]) == [server.http_port]


def test_wrong_shape_is_rejected_and_server_stays_ready(server, client):
    bad = {"pixel_values": np.zeros((1, 3, 28, 28), np.uint8)}
    with pytest.raises(InferenceServerException, match="shape"):
        client.infer("sam3_vision", inputs_for(httpclient, "vision", bad))
    assert server.is_ready() and client.is_model_ready("sam3_vision")


def test_graph_error_is_a_per_request_error(client, artifacts):
    """prompts=2 in text inputs but 3 in box inputs passes Triton's checks and fails in the graph."""
    feeds = {
        **random_feeds("concept", {"prompts": 2, "boxes": 1}),
        **{
            k: v
            for k, v in random_feeds("concept", {"prompts": 3, "boxes": 1}).items()
            if k in ("boxes", "box_labels", "box_valid")
        },
    }
    with pytest.raises(InferenceServerException, match="sam3_concept"):
        client.infer("sam3_concept", inputs_for(httpclient, "concept", feeds))
    good = random_feeds("concept", {"prompts": 1, "boxes": 1})
    result = client.infer("sam3_concept", inputs_for(httpclient, "concept", good))
    assert_outputs(result, "concept", reference(artifacts, "concept", good))


def test_model_that_fails_to_load_raises_start_error(artifacts, tmp_path):
    repo = build_repository(artifacts, tmp_path / "repo", "cpu", models=["text"], intra_op_threads=1, precision="fp32")
    wrong = repo / "sam3_text" / "1" / "text.onnx"
    wrong.unlink()  # a hard link to the artifact: replace it, never write through it
    shutil.copyfile(artifacts / "vision.onnx", wrong)
    server = TritonServer(repo, ready_timeout_s=120)
    with pytest.raises(TritonStartError) as error:
        with server:
            pass
    message = str(error.value)
    assert "sam3_text" in message and "does not match config.pbtxt" in message and "pixel_values" in message
    assert server.returncode not in (None, 0)


def test_stop_kills_a_stub_that_outlived_tritonserver(artifacts, tmp_path):
    """A stub that cannot exit on its own (stopped, as a deadlocked one is stuck) under a tritonserver
    killed alone: stop() must leave no process of the group. One such stub once ran on orphaned after
    its tritonserver was gone, burning a core through the rest of a CI run. Nor may the killed server's
    shared memory stay behind (one module of these tests used to leave 15 regions, 32 MiB of RAM)."""
    repo = build_repository(artifacts, tmp_path / "repo", "cpu", models=["text"], intra_op_threads=1, precision="fp32")
    with TritonServer(repo, ready_timeout_s=150) as server:
        group = server.pid
        stubs = [pid for pid in live_members(group) if pid != group]
        assert stubs, "no Python backend stub in tritonserver's process group"
        regions = server.shm_regions()
        assert len(regions) >= len(stubs), (regions, sorted(p.name for p in SHM_DIR.iterdir()))
        for pid in stubs:
            os.kill(pid, signal.SIGSTOP)
        os.kill(group, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while server.returncode is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert server.returncode is not None and set(stubs) <= set(live_members(group))
    deadline = time.monotonic() + 10
    while live_members(group) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not live_members(group), f"left running after stop(): {live_members(group)}"
    assert not [r for r in regions if r.exists()], "the killed server's shared memory was left behind"


def live_members(pgid: int) -> list[int]:
    """Pids of the processes of group ``pgid`` that are not zombies (from /proc/<pid>/stat)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found
