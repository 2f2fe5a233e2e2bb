"""Find, configure and run NVIDIA Triton Inference Server.

Locally we run the real tritonserver (2.51, Python backend only) bundled in the
``nvidia-pytriton`` wheel; in the NGC image on Modal the binary is
``/opt/tritonserver/bin/tritonserver`` with its default backends. Both build their command
line with :func:`server_command`.

Facts of the bundled server that this module handles:

* the Python backend must sit in ``<backend_dir>/python/`` next to the stub built for this
  interpreter (``python_backend_stubs/<major.minor>/triton_python_backend_stub``); we assemble
  that directory once, with symlinks, under ``~/.cache/sam3-triton/backends/`` (or
  ``$SAM3_TRITON_CACHE``);
* ``LD_LIBRARY_PATH`` must include ``site-packages/nvidia_pytriton.libs``;
* the stub ignores ``PYTHONPATH`` and runs the ``python3`` first on ``PATH``, so a directory
  whose ``python3`` is ``sys.executable`` goes first on ``PATH`` (the venv's ``bin``, or a shim
  where the interpreter's dir has only ``python``, as in the NGC image: :func:`python3_dir`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sam3_spec import NP_DTYPES, component_specs

INSTALL_HINT = (
    "install it into this environment: pip install 'nvidia-pytriton==0.7.*' 'numpy<2' "
    "(Linux x86_64 wheel that bundles tritonserver 2.51)"
)
MODEL_CONTROL_MODES = ("none", "poll", "explicit")
READY_PATH = "/v2/health/ready"
CACHE_ENV = "SAM3_TRITON_CACHE"
LOG_TAIL_LINES = 60
LOCALHOST = "127.0.0.1"
SHM_DIR = Path("/dev/shm")
_LOAD_ERROR = re.compile(r"""failed to load '([^']+)' version \d+: (.*?)"?$""", re.MULTILINE)


class TritonNotFoundError(RuntimeError):
    """No usable tritonserver: the nvidia-pytriton wheel (or a part of it) is missing."""


class TritonStartError(RuntimeError):
    """tritonserver could not start (its ports are taken), exited, or did not become ready; the message says why
    (with the tail of its log when it ran)."""


@dataclass
class TritonInstall:
    """A runnable tritonserver: binary, backend directory (holds ``python/``) and library dirs.

    ``cache_dir`` holds response-cache implementations (``local/``) when the install has them.
    """

    binary: Path
    backend_dir: Path | None  # None: the binary's own default (e.g. /opt/tritonserver/backends in NGC images)
    lib_dirs: list[Path] = field(default_factory=list)
    cache_dir: Path | None = None


# ---------------------------------------------------------------- finding the bundled server


def find_tritonserver() -> TritonInstall:
    """Locate the tritonserver of the nvidia-pytriton wheel and assemble its backend directory.

    Raises TritonNotFoundError (saying how to install it) when the wheel or a file is missing.
    """
    dist = _pytriton_dist_dir()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    libs = dist.parent.parent / "nvidia_pytriton.libs"
    needed = (dist / "bin" / "tritonserver", dist / "backends" / "python" / "libtriton_python.so", stub, libs)
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise TritonNotFoundError(
            f"the nvidia-pytriton wheel in {dist} lacks {', '.join(missing)} "
            f"(no Python backend stub for Python {version}?); {INSTALL_HINT}"
        )
    caches = dist / "caches"
    return TritonInstall(
        binary=needed[0],
        backend_dir=_prepare_backend_dir(dist, stub),
        lib_dirs=[libs],
        cache_dir=caches if caches.is_dir() else None,
    )


def _pytriton_dist_dir() -> Path:
    """``site-packages/pytriton/tritonserver`` (found without importing pytriton)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonNotFoundError(f"the nvidia-pytriton wheel is not installed for {sys.executable}; {INSTALL_HINT}")
    dist = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
    if not dist.is_dir():
        raise TritonNotFoundError(f"{dist} not found: this pytriton install bundles no tritonserver; {INSTALL_HINT}")
    return dist


def cache_root() -> Path:
    """Directory for assembled backend dirs: $SAM3_TRITON_CACHE, else $XDG_CACHE_HOME or ~/.cache + /sam3-triton."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sam3-triton"


def _prepare_backend_dir(dist: Path, stub: Path) -> Path:
    """Build (idempotently) ``<cache>/backends/<key>/python/`` = backend files + the stub; return its parent."""
    key = hashlib.sha256(str(dist.resolve()).encode()).hexdigest()[:12]
    root = cache_root() / "backends" / f"py{sys.version_info.major}.{sys.version_info.minor}-{key}"
    python_dir = root / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for src in sorted((dist / "backends" / "python").iterdir()):
        if src.is_file():
            _link(src, python_dir / src.name)
    _link(stub, python_dir / "triton_python_backend_stub")
    return root


def _link(src: Path, dst: Path) -> None:
    """Make ``dst`` a symlink to ``src``; atomic (safe when several processes do it at once)."""
    if dst.is_symlink() and os.readlink(dst) == str(src):
        return
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(src)
    os.replace(tmp, dst)


# ---------------------------------------------------------------- command line and environment


def server_command(
    repo: Path,
    *,
    binary="tritonserver",
    backend_dir=None,
    http_port=8000,
    grpc_port=8001,
    metrics_port=8002,
    model_control="none",
    log_verbose=0,
    extra_args=(),
    address: str | None = None,
    cache_dir=None,
    exit_timeout_s: int | None = None,
    cuda_pool_bytes: int | None = None,
    shm_prefix: str | None = None,
) -> list[str]:
    """The tritonserver command line (argv list) used both locally and in the Modal container.

    ``backend_dir``/``cache_dir`` None keep Triton's defaults (``/opt/tritonserver/...`` in the
    NGC image). ``address`` None binds Triton's default (all interfaces); local runs pass
    127.0.0.1. ``exit_timeout_s`` bounds how long shutdown waits for in-flight work and open
    client connections (Triton's default: 30 s). ``cuda_pool_bytes`` sizes GPU 0's CUDA memory
    pool (see :func:`cuda_pool_args`). ``shm_prefix`` names the Python backend's shared-memory regions
    (``/dev/shm/<prefix>*``; Triton's default prefix is shared by every server). Readiness is strict and a
    model that fails to load makes the server exit non-zero. ``model_control="explicit"`` loads every model at start
    (``--load-model=*``) and lets the repository API reload one (server/watchdog.py does).
    """
    if model_control not in MODEL_CONTROL_MODES:
        raise ValueError(f"model_control must be one of {MODEL_CONTROL_MODES}, got {model_control!r}")
    cmd = [
        str(binary),
        f"--model-repository={Path(repo)}",
        f"--http-port={int(http_port)}",
        f"--grpc-port={int(grpc_port)}",
        f"--metrics-port={int(metrics_port)}",
        f"--model-control-mode={model_control}",
        "--allow-metrics=true",
        "--strict-readiness=true",
        "--exit-on-error=true",
        f"--log-verbose={int(log_verbose)}",
    ]
    if model_control == "explicit":
        cmd.append("--load-model=*")
    if address:
        cmd += [f"--{api}-address={address}" for api in ("http", "grpc", "metrics")]
    if backend_dir is not None:
        cmd.append(f"--backend-directory={Path(backend_dir)}")
    if cache_dir is not None:
        cmd.append(f"--cache-directory={Path(cache_dir)}")
    if exit_timeout_s is not None:
        cmd.append(f"--exit-timeout-secs={int(exit_timeout_s)}")
    if cuda_pool_bytes is not None:
        cmd += cuda_pool_args(cuda_pool_bytes)
    if shm_prefix is not None:
        cmd.append(f"--backend-config=python,shm-region-prefix-name={shm_prefix}")
    return cmd + [str(a) for a in extra_args]


# ---------------------------------------------------------------- CUDA memory pool (GPU target)

POOL_HEADROOM = 2.0  # two calls' tensors in flight at once
POOL_ALIGN = 1 << 20  # round up to MiB


def bls_call_bytes(spec, sizes: dict[str, int]) -> int:
    """Bytes one call of a component moves one way at ``sizes``: max(all inputs, all outputs)."""

    def total(tensors) -> int:
        return sum(int(np.prod(t.resolve(sizes))) * np.dtype(NP_DTYPES[t.dtype]).itemsize for t in tensors)

    return max(total(spec.inputs), total(spec.outputs))


def cuda_pool_bytes(dims, headroom: float = POOL_HEADROOM) -> int:
    """Triton's CUDA memory pool for the GPU repository of a model with ``dims`` (sam3_spec.Dims).

    The Python backend moves BLS tensors between the orchestrator and Triton through this pool
    (64 MB by default) and falls back to slower CUDA IPC when a call does not fit; one fp32
    ``fpn_0`` alone is 85 MB at 1008 px. Sized from the spec: the largest call of any component
    at its profile's max sizes, times ``headroom``, rounded up to MiB.
    """
    largest = max(bls_call_bytes(spec, spec.sizes("max")) for spec in component_specs(dims).values())
    return -(-int(largest * headroom) // POOL_ALIGN) * POOL_ALIGN


def cuda_pool_args(pool_bytes: int, gpu: int = 0) -> list[str]:
    """``--cuda-memory-pool-byte-size=<gpu>:<bytes>`` for tritonserver."""
    if pool_bytes < 0:
        raise ValueError(f"CUDA memory pool size must be ≥ 0 bytes, got {pool_bytes}")
    return [f"--cuda-memory-pool-byte-size={int(gpu)}:{int(pool_bytes)}"]


def server_env(install: TritonInstall, base=os.environ) -> dict:
    """Environment for tritonserver: a ``python3`` of this interpreter first on PATH, its libs on LD_LIBRARY_PATH."""
    env = dict(base)
    env["PATH"] = _prepend([python3_dir()], env.get("PATH"))
    env["LD_LIBRARY_PATH"] = _prepend(install.lib_dirs, env.get("LD_LIBRARY_PATH"))
    return env


def python3_dir(executable: str | None = None, prefix: str | None = None) -> Path:
    """A directory whose ``python3`` is this interpreter (the Python backend stub runs the first python3 on PATH).

    The interpreter's own bin dir when it holds a ``python3`` (a venv). Otherwise (e.g. the NGC
    image, which links only /usr/local/bin/python) a shim under the cache: ``bin/python3``
    linked to the resolved interpreter and, for a venv, the venv's ``pyvenv.cfg`` and ``lib``
    beside it. The stub's embedded Python finds its prefix from that path the way ``python3``
    does (a shell-script shim is not enough: the stub then loses the venv's site-packages).
    """
    executable, prefix = Path(executable or sys.executable), Path(prefix or sys.prefix)
    if (executable.parent / "python3").exists():
        return executable.parent
    key = hashlib.sha256(f"{executable}|{prefix}".encode()).hexdigest()[:12]
    root = cache_root() / "python3-shim" / key
    (root / "bin").mkdir(parents=True, exist_ok=True)
    _link(executable.resolve(), root / "bin" / "python3")
    if (prefix / "pyvenv.cfg").is_file():
        _link(prefix / "pyvenv.cfg", root / "pyvenv.cfg")
        _link(prefix / "lib", root / "lib")
    return root / "bin"


def _prepend(dirs, current: str | None) -> str:
    """``dirs`` + the entries of the path list ``current`` that are not already in ``dirs``."""
    first = [str(d) for d in dirs]
    rest = [p for p in (current or "").split(os.pathsep) if p and p not in first]
    return os.pathsep.join(first + rest)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOCALHOST, 0))
        return s.getsockname()[1]


def ports_in_use(ports, address: str | None = LOCALHOST) -> list[int]:
    """Those of ``ports`` that something already listens on at ``address`` (None: all interfaces). A port
    left in TIME_WAIT by a stopped server counts as free, as it does for tritonserver."""
    busy = []
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((address or "0.0.0.0", int(port)))
            except OSError:
                busy.append(int(port))
    return busy


# ---------------------------------------------------------------- the server process


class TritonServer:
    """A local tritonserver process serving ``repo`` on 127.0.0.1 (free ports unless given).

    Use as a context manager (start + wait_ready on enter, stop on exit) or call
    :meth:`start`, :meth:`wait_ready` and :meth:`stop`. stdout and stderr go to ``log_path``
    (a fresh temp file unless given). On stop, Triton waits up to ``exit_timeout_s`` for
    in-flight requests and open client connections (close your clients); after
    ``stop_grace_s`` seconds the process group is killed. Models are under explicit control
    (loaded at start, reloadable one by one: see server/watchdog.py); :meth:`restart` starts a
    fresh process on the same ports.
    """

    def __init__(
        self,
        repo: Path,
        *,
        install: TritonInstall | None = None,
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        model_control="explicit",
        log_verbose=0,
        extra_args=(),
        log_path: Path | None = None,
        ready_timeout_s=180.0,
        stop_grace_s=20.0,
        exit_timeout_s=10,
        address: str | None = LOCALHOST,
    ):
        self.repo = Path(repo)
        self.address = address  # interface to bind; None = Triton's default (all interfaces, e.g. in a container)
        self.install = install
        self.http_port, self.grpc_port, self.metrics_port = (
            p or free_port() for p in (http_port, grpc_port, metrics_port)
        )
        self.model_control, self.log_verbose, self.extra_args = model_control, log_verbose, tuple(extra_args)
        self.log_path = Path(log_path) if log_path else None
        self.ready_timeout_s, self.stop_grace_s, self.exit_timeout_s = ready_timeout_s, stop_grace_s, exit_timeout_s
        self.command: list[str] = []
        # this server's shared-memory regions: tritonserver removes them when it exits in order, never
        # when it is killed (the watchdog's restart, a hung shutdown); stop() removes what is left
        self.shm_prefix = f"sam3_triton_{os.getpid()}_{self.http_port}_"
        self._proc: subprocess.Popen | None = None
        self._log = None

    @property
    def http_url(self) -> str:
        """``http://127.0.0.1:<port>`` (tritonclient.http takes it without the scheme: see :attr:`http_address`)."""
        return f"http://{LOCALHOST}:{self.http_port}"

    @property
    def http_address(self) -> str:
        """``127.0.0.1:<port>`` as tritonclient.http.InferenceServerClient(url=...) expects."""
        return f"{LOCALHOST}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        """``127.0.0.1:<port>`` as tritonclient.grpc.InferenceServerClient(url=...) expects."""
        return f"{LOCALHOST}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        """Prometheus metrics endpoint, ``http://127.0.0.1:<port>/metrics``."""
        return f"http://{LOCALHOST}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        """Process id of tritonserver (None before start)."""
        return None if self._proc is None else self._proc.pid

    @property
    def returncode(self) -> int | None:
        """Exit status of tritonserver, None while it runs or before start."""
        return None if self._proc is None else self._proc.poll()

    def build_command(self) -> list[str]:
        """The tritonserver argv for this server (server_command with this install and ports)."""
        install = self.install or find_tritonserver()
        return server_command(
            self.repo,
            binary=install.binary,
            backend_dir=install.backend_dir,
            http_port=self.http_port,
            grpc_port=self.grpc_port,
            metrics_port=self.metrics_port,
            model_control=self.model_control,
            log_verbose=self.log_verbose,
            extra_args=self.extra_args,
            address=self.address,
            cache_dir=install.cache_dir,
            exit_timeout_s=self.exit_timeout_s,
            shm_prefix=self.shm_prefix,
        )

    def shm_regions(self) -> list[Path]:
        """The Python backend's shared-memory files of this server (``/dev/shm/<shm_prefix>*``)."""
        return sorted(SHM_DIR.glob(self.shm_prefix + "*"))

    def start(self) -> "TritonServer":
        """Launch tritonserver (does not wait for readiness; see :meth:`wait_ready`)."""
        if self._proc is not None:
            raise RuntimeError("this TritonServer was already started; create a new one")
        if not self.repo.is_dir():
            raise TritonStartError(
                f"model repository {self.repo} is not a directory: build it first (export.repository.build_repository)"
            )
        install = self.install = self.install or find_tritonserver()
        self.command = self.build_command()
        self._check_ports()
        self._open_log()
        self._proc = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=server_env(install),
            start_new_session=True,
        )
        return self

    def _check_ports(self, wait_s: float = 0.0) -> None:
        """TritonStartError when another process listens on one of this server's ports (for up to ``wait_s``):
        its ready endpoint would answer for this one (which then exits), and requests would go to it."""
        deadline = time.monotonic() + wait_s
        while busy := ports_in_use((self.http_port, self.grpc_port, self.metrics_port), self.address):
            if time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        if busy:
            raise TritonStartError(
                f"port(s) {', '.join(map(str, busy))} on {self.address or 'all interfaces'} are already in use "
                "(another tritonserver?): stop it, or choose other ports (--http-port, --grpc-port, --metrics-port)"
            )

    def _open_log(self, mode: str = "wb") -> None:
        if self.log_path is None:
            self.log_path = Path(tempfile.mkdtemp(prefix="sam3-triton-")) / "tritonserver.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, mode)

    def restart(self, timeout_s: float | None = None) -> "TritonServer":
        """Stop tritonserver (and its stubs), start a new one on the same ports, wait until ready.

        The log continues in the same file. Raises TritonStartError like :meth:`wait_ready`.
        """
        self.stop()
        self._proc = None
        self._check_ports(wait_s=10.0)  # the old server's stubs may hold its sockets while they die
        self._open_log("ab")
        self._proc = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=server_env(self.install),
            start_new_session=True,
        )
        return self.wait_ready(timeout_s)

    def is_ready(self) -> bool:
        """True when GET /v2/health/ready answers 200 (all models loaded: readiness is strict)."""
        try:
            with urllib.request.urlopen(self.http_url + READY_PATH, timeout=2.0) as response:
                return response.status == 200
        except OSError:  # refused, reset, timed out or HTTP 400 "not ready": all mean "not ready yet"
            return False

    def wait_ready(self, timeout_s: float | None = None) -> "TritonServer":
        """Poll readiness; raise TritonStartError (with the log tail) if tritonserver exits or times out."""
        if self._proc is None:
            raise RuntimeError("call start() before wait_ready()")
        timeout_s = self.ready_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        while not self.is_ready():
            code = self._proc.poll()
            if code is not None:
                raise TritonStartError(self._failure(f"tritonserver exited with code {code} before it was ready"))
            if time.monotonic() > deadline:
                raise TritonStartError(self._failure(f"tritonserver was not ready after {timeout_s:.0f} s"))
            time.sleep(0.25)
        return self

    def _failure(self, what: str) -> str:
        failed = "".join(f"\n  {model}: {reason}" for model, reason in self.load_errors())
        failed = f"\nModels that failed to load:{failed}" if failed else ""
        tail = "\n".join(line for line in self.log_tail().splitlines() if not line.startswith("+-"))
        return (
            f"{what} (model repository {self.repo}).{failed}\nLast lines of {self.log_path}:\n"
            f"{tail}\ncommand: {' '.join(self.command)}"
        )

    def load_errors(self) -> list[tuple[str, str]]:
        """[(model, reason)] for every "failed to load '<model>' version <v>: <reason>" in the log."""
        if self.log_path is None or not self.log_path.is_file():
            return []
        text = self.log_path.read_text(errors="replace")
        return [(m.group(1), m.group(2)) for m in _LOAD_ERROR.finditer(text)]

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the server log ('' before start)."""
        if self.log_path is None or not self.log_path.is_file():
            return ""
        with open(self.log_path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 64 * 1024))
            text = f.read().decode("utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> int | None:
        """SIGTERM, wait ``stop_grace_s``, then SIGKILL the whole process group; return the exit status.

        Whatever of the group outlives tritonserver is killed too, however tritonserver ended: a Python
        backend stub that hung (or outlived a tritonserver killed alone) would otherwise run on orphaned,
        burning CPU and holding its shared memory."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(self.stop_grace_s)
            except subprocess.TimeoutExpired:
                pass
        self._kill_group()
        self._log.close()
        return self._proc.returncode

    def _kill_group(self) -> None:
        """SIGKILL tritonserver and its Python backend stubs (they share its process group), then remove
        the shared memory they left (each region is RAM: leaked, a server that restarts often runs out)."""
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # the group is already gone
        self._proc.wait(10)
        for region in self.shm_regions():
            region.unlink(missing_ok=True)

    def __enter__(self) -> "TritonServer":
        self.start()
        try:
            return self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
