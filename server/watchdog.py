"""Self-healing for a running tritonserver: find a dead or unhealthy model, reload it, else restart the server.

    server = TritonServer(repo, model_control="explicit").start().wait_ready()
    watchdog = Watchdog(server).start()
    watchdog.ready          # False while a model is broken or being recovered
    watchdog.status()       # {"status": "ready" | "recovering" | "unavailable", "broken": {model: reason}, ...}
    watchdog.metrics_text() # Prometheus counters: recoveries by model and action, ready, last recovery seconds
    watchdog.stop()

Each round (every ``interval_s``, and at once after :meth:`Watchdog.report_failure`) checks, for real:

1. the tritonserver process is alive;
2. Triton's repository index (``POST /v2/repository/index``): every model of the repository is READY;
3. Python-backend stubs: each such model has as many live ``triton_python_backend_stub`` children of
   tritonserver as it has instances (the stub's command line names its instance, e.g. ``sam3_vision_0_0``).
   Triton 2.51 never restarts a stub killed by SIGKILL (out-of-memory killer, native crash), and its ready
   endpoints keep answering 200 meanwhile: this check is what notices;
4. every ``canary_interval_s``, a canary inference of the orchestrator ``sam3``: a request with an unknown
   mode, which only the orchestrator's Python code can refuse (400). "Stub process ... is not healthy"
   or no answer means broken. Skipped when Triton's statistics show ``sam3`` answered requests since the
   last look: traffic proves the same, and a canary would only queue behind it (measured on the bench
   model: a request nobody but the watchdog sent queued 197 ms behind one of ten timed text requests,
   and the benchmark's P5 counted such a request, "other requests in stats", in 6 of 24 cells). A failure
   the gateway reports always gets its canary.

Recovery needs explicit model control (``--model-control-mode=explicit --load-model=*``): each broken
model is unloaded and loaded again through the repository API (Triton's ``/v2/health/ready`` answers
not-ready meanwhile); when that fails, or tritonserver itself died, tritonserver is restarted on the
same ports. Every recovery is logged (logger ``sam3.watchdog``) and counted.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from sam3_spec import ORCHESTRATOR

log = logging.getLogger("sam3.watchdog")

STUB_BINARY = "triton_python_backend_stub"
CANARY_MODE = "__watchdog_canary__"
SERVER = "tritonserver"  # key of a broken server (not a model) in ``broken``
UNHEALTHY_STUB = re.compile(r"Stub process '([^']+)' is not healthy")
OVERLOADED = re.compile(r"exceeds maximum queue size|request timeout expired", re.IGNORECASE)
INDEX_MISSES_BEFORE_RESTART = 3


@dataclass
class ModelInfo:
    """A model of the repository: its name, backend and how many instances (stub processes) it runs."""

    name: str
    backend: str
    instances: int

    @property
    def has_stubs(self) -> bool:
        return self.backend == "python"


@dataclass
class Recovery:
    """One finished recovery: which models, how (reload | restart), whether it worked, how long it took (s)."""

    models: tuple
    action: str
    ok: bool
    seconds: float
    at: float = field(default_factory=time.time)


# ---------------------------------------------------------------- reading the repository and the process table


def triton_models(http: "TritonHttp") -> dict[str, ModelInfo]:
    """{name: ModelInfo} of every model in Triton's repository index, from the config Triton loaded
    (``GET /v2/models/<m>/config``: backend, instance groups)."""
    models = {}
    for name in http.model_states():
        config = http.model_config(name)
        backend = str(config.get("backend") or config.get("platform", ""))
        models[name] = ModelInfo(name, backend, _instance_count(config))
    return models


def _instance_count(config: dict) -> int:
    """Instances a model config (JSON) asks for: sum of count (default 1) x number of GPUs listed (default 1)."""
    groups = config.get("instance_group", [])
    groups = groups if isinstance(groups, list) else [groups]
    total = 0
    for group in groups:
        gpus = group.get("gpus", [])
        total += int(group.get("count", 1)) * max(1, len(gpus) if isinstance(gpus, list) else 1)
    return total or 1


def stub_processes(server_pid: int, proc: Path = Path("/proc")) -> dict[int, list[str]]:
    """{pid: argv} of the live Python-backend stubs whose parent is ``server_pid``.

    A stub's argv names its model instance (e.g. ``... sam3_vision_0_0 DEFAULT``).
    """
    found = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        args, parent, state = _process(entry)
        if args and args[0].endswith(STUB_BINARY) and parent == server_pid and state not in ("Z", "X"):
            found[int(entry.name)] = args
    return found


def _process(entry: Path) -> tuple[list[str], int, str]:
    """(argv, parent pid, state letter) of /proc/<pid>; ([], 0, "") when it vanished meanwhile."""
    try:
        args = [a.decode(errors="replace") for a in (entry / "cmdline").read_bytes().split(b"\0") if a]
        stat = (entry / "stat").read_text()
    except OSError:
        return [], 0, ""
    fields = stat.rsplit(")", 1)[-1].split()
    return args, int(fields[1]), fields[0]


def model_of_instance(instance: str, names) -> str | None:
    """The model an instance name belongs to ("sam3_vision_0_0" → "sam3_vision"); None if none fits."""
    fits = [n for n in names if re.fullmatch(re.escape(n) + r"(_\d+)+", instance)]
    return max(fits, key=len) if fits else None


def stub_pids(server_pid: int, names) -> dict[str, list[int]]:
    """{model: [pid of each live stub]} for the given model names (the instance found in the argv)."""
    found: dict[str, list[int]] = {name: [] for name in names}
    for pid, args in stub_processes(server_pid).items():
        models = (model_of_instance(arg, names) for arg in args[1:])
        model = next((m for m in models if m is not None), None)
        if model is not None:
            found[model].append(pid)
    return found


def stub_counts(server_pid: int, names) -> dict[str, int]:
    """{model: number of live stub processes} for the given model names."""
    return {name: len(pids) for name, pids in stub_pids(server_pid, names).items()}


# ---------------------------------------------------------------- Triton's HTTP API


class TritonHttp:
    """The few KServe / repository calls the watchdog makes (standard library HTTP, bounded timeouts)."""

    def __init__(self, url: str, timeout_s: float = 5.0):
        self.url, self.timeout_s = url.rstrip("/"), timeout_s

    def call(self, path: str, body: dict | None = None, timeout_s: float | None = None) -> tuple[int, bytes]:
        """(status, body) of GET (body None) or POST ``path``; OSError when nothing answers."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout_s or self.timeout_s) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def model_states(self) -> dict[str, str]:
        """{model: state} from the repository index (READY, UNAVAILABLE, LOADING, ...)."""
        status, body = self.call("/v2/repository/index", {})
        if status != 200:
            raise OSError(f"repository index answered {status}: {body[:200]!r}")
        return {m["name"]: m.get("state", "") for m in json.loads(body)}

    def model_config(self, model: str) -> dict:
        """The configuration Triton loaded for ``model`` (JSON)."""
        status, body = self.call(f"/v2/models/{model}/config")
        if status != 200:
            raise OSError(f"config of {model} answered {status}: {body[:200]!r}")
        return json.loads(body)

    def reload(self, model: str, timeout_s: float) -> str | None:
        """Unload then load ``model``; None when done, else Triton's reason."""
        for action in ("unload", "load"):
            status, body = self.call(f"/v2/repository/models/{model}/{action}", {}, timeout_s)
            if status != 200:
                return f"{action} answered {status}: {body[:300].decode(errors='replace')}"
        return None

    def answered(self, model: str) -> int:
        """Requests ``model``'s own code has answered (Triton's success count, its error responses included)."""
        status, body = self.call(f"/v2/models/{model}/stats")
        if status != 200:
            raise OSError(f"statistics of {model} answered {status}: {body[:200]!r}")
        return int(json.loads(body)["model_stats"][0]["inference_stats"]["success"]["count"])

    def canary(self, model: str, timeout_s: float) -> str | None:
        """An inference with an unknown mode; None when the model's own code answered, else the failure."""
        inputs = [{"name": "mode", "datatype": "BYTES", "shape": self._mode_shape(model), "data": [CANARY_MODE]}]
        status, body = self.call(f"/v2/models/{model}/infer", {"inputs": inputs}, timeout_s)
        text = body[:500].decode(errors="replace")
        if UNHEALTHY_STUB.search(text) or status >= 500 and "queue" not in text.lower():
            return f"canary inference failed ({status}): {text[:200]}"
        return None

    def _mode_shape(self, model: str) -> list[int]:
        """Shape of one ``mode`` value from the model's metadata ([1], or [1, 1] when batched)."""
        status, body = self.call(f"/v2/models/{model}")
        if status == 200:
            for tensor in json.loads(body).get("inputs", []):
                if tensor["name"] == "mode":
                    return [1 if d < 0 else d for d in tensor["shape"]]
        return [1]


# ---------------------------------------------------------------- the watchdog


class Watchdog:
    """Watches a running :class:`server.triton.TritonServer` from a daemon thread and heals it.

    interval_s: seconds between rounds of checks. canary_interval_s: seconds between canary
    inferences of the orchestrator (0 = never). reload_timeout_s: limit of one model's reload.
    restart_timeout_s: limit for a restarted tritonserver to become ready again.
    """

    def __init__(
        self,
        server,
        *,
        interval_s: float = 1.0,
        canary_interval_s: float = 15.0,
        canary_timeout_s: float = 30.0,
        reload_timeout_s: float = 120.0,
        restart_timeout_s: float = 300.0,
    ):
        self.server = server
        self.interval_s, self.canary_interval_s, self.canary_timeout_s = interval_s, canary_interval_s, canary_timeout_s
        self.reload_timeout_s, self.restart_timeout_s = reload_timeout_s, restart_timeout_s
        self.http = TritonHttp(server.http_url)
        self.models: dict[str, ModelInfo] = {}
        self.history: list[Recovery] = []
        self._broken: dict[str, str] = {}
        self._recovering = False
        self._index_misses, self._failures_in_row, self._next_canary, self._settled_at = 0, 0, 0.0, 0.0
        self._answered, self._forced = -1, False  # sam3's answered count at the last look; a canary is owed
        self._lock, self._wake, self._halt = threading.Lock(), threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None
        self._watch_stubs = True
        self._listeners: list = []

    # ---- life cycle
    def start(self) -> "Watchdog":
        """Learn the models from Triton and start the checking thread (the server must be ready)."""
        self.models = triton_models(self.http)
        self._watch_stubs = self._stubs_visible()
        self._next_canary, self._answered = time.monotonic() + self.canary_interval_s, self._answered_now()
        self._thread = threading.Thread(target=self._run, daemon=True, name="sam3-watchdog")
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop checking (a recovery in progress finishes first, up to ``timeout_s``)."""
        self._halt.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _stubs_visible(self) -> bool:
        """False (with a warning) when no stub of any Python model shows in the process table."""
        python_models = [m for m in self.models.values() if m.has_stubs]
        if not python_models or any(stub_counts(self.server.pid, [m.name for m in python_models]).values()):
            return True
        log.warning(
            "no Python backend stub of tritonserver (pid %s) is visible in the process table; "
            "stub checks are off, the canary and the repository index remain",
            self.server.pid,
        )
        return False

    def on_incident(self, listener) -> None:
        """Call ``listener(broken)`` (from the watchdog's thread) when a recovery of ``broken`` begins,
        e.g. so the gateway can answer requests stuck on a dead orchestrator at once."""
        self._listeners.append(listener)

    # ---- state for health endpoints and the gateway
    @property
    def ready(self) -> bool:
        """True when the last check found every model healthy and no recovery is running."""
        with self._lock:
            return not self._broken and not self._recovering

    def status(self, live: bool = False) -> dict:
        """{"status", "broken": {model: reason}, "recoveries", "last_recovery_s"}; ``live`` re-checks first."""
        if live and not self._recovering:
            found = self._credible(self.check())
            if found is not None:
                self._publish(found)
        with self._lock:
            state = "recovering" if self._recovering else "unavailable" if self._broken else "ready"
            return {
                "status": state,
                "broken": dict(self._broken),
                "recoveries": sum(r.ok for r in self.history),
                "last_recovery_s": self._last_seconds(),
            }

    def unsettled_since(self, t0: float) -> bool:
        """True when a stage is broken or being healed now, or a recovery ended after ``t0`` (time.monotonic())."""
        with self._lock:
            return bool(self._broken) or self._recovering or self._settled_at > t0

    def retry_after_s(self) -> int:
        """Seconds a client should wait before retrying: the last recovery's duration (at least 1, default 5)."""
        last = self._last_seconds()
        return max(1, math.ceil(last)) if last else 5

    def _last_seconds(self) -> float | None:
        done = [r.seconds for r in self.history if r.ok]
        return round(done[-1], 3) if done else None

    def report_failure(self, message: str) -> bool:
        """Tell the watchdog a request failed with ``message``: an immediate round of checks (with the
        canary) unless the message says the server is merely at capacity. True when a round was asked for."""
        if OVERLOADED.search(message or ""):
            return False
        self._next_canary, self._forced = 0.0, True
        self._wake.set()
        return True

    def metrics_text(self) -> str:
        """Prometheus text: sam3_watchdog_ready, recoveries by model and action, last recovery seconds."""
        lines = [
            "# HELP sam3_watchdog_ready 1 when every model passed the last check, else 0",
            "# TYPE sam3_watchdog_ready gauge",
            f"sam3_watchdog_ready {int(self.ready)}",
            "# HELP sam3_watchdog_recoveries_total recoveries of broken models, by model, action and result",
            "# TYPE sam3_watchdog_recoveries_total counter",
        ]
        counts: dict[tuple, int] = {}
        for r in list(self.history):
            for model in r.models:
                key = (model, r.action, "ok" if r.ok else "failed")
                counts[key] = counts.get(key, 0) + 1
        lines += [
            f'sam3_watchdog_recoveries_total{{model="{m}",action="{a}",result="{ok}"}} {n}'
            for (m, a, ok), n in sorted(counts.items())
        ]
        lines += [
            "# HELP sam3_watchdog_last_recovery_seconds duration of the last successful recovery",
            "# TYPE sam3_watchdog_last_recovery_seconds gauge",
            f"sam3_watchdog_last_recovery_seconds {self._last_seconds() or 0}",
        ]
        return "\n".join(lines) + "\n"

    # ---- checks
    def check(self) -> dict[str, str]:
        """One round of the cheap checks (process, repository index, stubs): {model or "tritonserver": reason}."""
        code = self.server.returncode
        if code is not None:
            return {SERVER: f"tritonserver exited with code {code}"}
        try:
            states = self.http.model_states()
            self._index_misses = 0
        except (OSError, ValueError) as err:
            self._index_misses += 1
            return {SERVER: f"tritonserver does not answer its repository index ({err})"}
        broken = {m: f"state {states.get(m, 'missing')}" for m in self.models if states.get(m) != "READY"}
        return broken | self._stub_problems(broken)

    def _stub_problems(self, skip) -> dict[str, str]:
        if not self._watch_stubs:
            return {}
        wanted = {m.name: m.instances for m in self.models.values() if m.has_stubs and m.name not in skip}
        have = stub_counts(self.server.pid, list(self.models))
        return {
            m: f"{n - have[m]} of {n} Python backend stub process(es) died" for m, n in wanted.items() if have[m] < n
        }

    def _canary(self) -> dict[str, str]:
        """The orchestrator's canary, when it is due: {"sam3": reason} on failure."""
        if not self.canary_interval_s or ORCHESTRATOR not in self.models or time.monotonic() < self._next_canary:
            return {}
        self._next_canary = time.monotonic() + self.canary_interval_s
        if self._serving():
            return {}
        try:
            failure = self.http.canary(ORCHESTRATOR, self.canary_timeout_s)
        except (OSError, ValueError) as err:
            log.warning("canary of %s got no answer within %.0f s: %s", ORCHESTRATOR, self.canary_timeout_s, err)
            return {}
        return {ORCHESTRATOR: failure} if failure else {}

    def _serving(self) -> bool:
        """Whether ``sam3`` answered requests since the last look (no canary needed), unless one is owed. The
        count kept includes the canary about to run."""
        forced, self._forced = self._forced, False
        answered = self._answered_now()
        if answered < 0:
            return False
        moved, self._answered = answered > self._answered >= 0, answered
        if forced or not moved:
            self._answered += 1
            return False
        return True

    def _answered_now(self) -> int:
        """sam3's answered count now, -1 when Triton's statistics do not say."""
        if ORCHESTRATOR not in self.models:
            return -1
        try:
            return self.http.answered(ORCHESTRATOR)
        except (OSError, ValueError, KeyError, IndexError):
            return -1

    def _publish(self, broken: dict[str, str]) -> None:
        with self._lock:
            self._broken = dict(broken)

    # ---- the loop and recovery
    def _run(self) -> None:
        while not self._halt.is_set():
            try:
                self._round()
            except Exception:  # the watchdog must outlive any surprise; the traceback goes to the log
                log.exception("watchdog round failed")
            self._wake.wait(self._pause_s())
            self._wake.clear()

    def _credible(self, broken: dict[str, str]) -> dict[str, str] | None:
        """``broken``, or None while the only sign is a few unanswered index calls of a live server
        (a slow answer is not yet a dead server)."""
        if SERVER in broken and self.server.returncode is None and self._index_misses < INDEX_MISSES_BEFORE_RESTART:
            return None
        return broken

    def _round(self) -> None:
        broken = self._credible(self.check())
        if broken is None:
            return
        broken = broken or self._canary()
        self._publish(broken)
        if broken and not self._halt.is_set():
            self._recover(broken)

    def _pause_s(self) -> float:
        """interval_s, or a growing back-off (up to 60 s) after failed recoveries."""
        return self.interval_s if not self._failures_in_row else min(60.0, 2.0**self._failures_in_row)

    def _recover(self, broken: dict[str, str]) -> None:
        start = time.monotonic()
        with self._lock:
            self._recovering = True
        log.error("unhealthy: %s; recovering", "; ".join(f"{m}: {r}" for m, r in broken.items()))
        self._tell(broken)
        try:
            action = self._reload_or_restart(broken)
        except Exception:  # e.g. TritonStartError: the restarted server did not become ready
            log.exception("recovery of %s failed", ", ".join(broken))
            action = "restart"
        try:
            left = self.check() or self._canary_now()
        finally:
            with self._lock:
                self._recovering = False
        self._record(Recovery(tuple(sorted(broken)), action, not left, time.monotonic() - start), left)

    def _tell(self, broken: dict[str, str]) -> None:
        for listener in list(self._listeners):
            try:
                listener(dict(broken))
            except Exception:  # a listener's bug must not stop the recovery
                log.exception("incident listener %r failed", listener)

    def _reload_or_restart(self, broken: dict[str, str]) -> str:
        if SERVER not in broken and self.server.model_control == "explicit":
            failures = {m: why for m in broken if (why := self._reload(m))}
            if not failures:
                return "reload"
            log.error("reload failed (%s); restarting tritonserver", failures)
        self.server.restart(self.restart_timeout_s)
        return "restart"

    def _reload(self, model: str) -> str | None:
        """None when ``model`` was unloaded and loaded again within ``reload_timeout_s``, else why not.
        Triton's unload answers at once and the load starts new instances beside the old ones (~1.5 s on the
        tiny model); a load that gets no answer in time (Triton stuck, or gone meanwhile) is a failed reload,
        healed by a restart."""
        try:
            return self.http.reload(model, self.reload_timeout_s)
        except OSError as err:  # socket timeout, or the server went away meanwhile
            return f"no answer within {self.reload_timeout_s:g} s ({err})"

    def _canary_now(self) -> dict[str, str]:
        self._next_canary, self._forced = 0.0, True
        return self._canary()

    def _record(self, recovery: Recovery, left: dict[str, str]) -> None:
        self.history.append(recovery)
        self._settled_at = time.monotonic()
        self._publish(left)
        if recovery.ok:
            self._failures_in_row = 0
            log.warning("recovered %s by %s in %.1f s", ", ".join(recovery.models), recovery.action, recovery.seconds)
        else:
            self._failures_in_row += 1
            log.error(
                "recovery of %s by %s did not heal it (%s); next try in %.0f s",
                ", ".join(recovery.models),
                recovery.action,
                left,
                self._pause_s(),
            )
