"""Soak test of a running service through its REST gateway, optionally killing a stage mid-way.

    sam3-bench soak --url http://127.0.0.1:8080 --requests 2000 --concurrency 8 \\
                     --kill sam3_vision --kill-at 0.5 --json soak.json

Sends ``--requests`` mixed requests (text, point, box, auto on a pool of ``--images`` synthetic
images of several sizes) from ``--concurrency`` threads. With ``--kill MODEL``, once ``--kill-at``
of the requests have started it SIGKILLs the Python backend stub process(es) of that model (found
in this machine's process table by the instance name in their command line, e.g. ``sam3_vision_0_0``)
and watches ``GET /health`` until it answers 200 again. Meanwhile it samples the resident memory
(RSS) of tritonserver and of every stub.

With ``--retries N`` each 503 is retried after its ``Retry-After`` (at most N times), as a
well-behaved client does; errors then count what still failed.

Report (stdout summary, JSON with ``--json``): requests, errors (by status; inside / outside the
recovery window = requests that overlap the time from the kill until /health answers 200 again),
latency p50/p99 (ms) of successful requests, throughput, recovery seconds, RSS over time and its
growth from the end of the warm-up (``--warmup-fraction`` of the requests, caches full) to the end
(and from a few seconds after the recovery to the end, which includes the restarted stub),
and how many response bodies carried a traceback or a file path (should be 0).
Exit status: 0 done (whatever the figures), 1 when the gateway cannot be reached, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import re
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from server.watchdog import stub_pids, stub_processes

MIX = (("text", 0.35), ("point", 0.3), ("box", 0.25), ("auto", 0.1))
CONCEPTS = ("person", "cat", "cup", "car", "tree", "dog")
SIZES = ((240, 320), (480, 640), (512, 512), (360, 270), (600, 800))
RECOVERY_SETTLE_S = 3.0  # after /health is ready again, before RSS growth is measured anew
INSTANCE = re.compile(r"[A-Za-z][\w.-]*?(_\d+)+")  # a model instance name, e.g. sam3_vision_0_0
LEAK = re.compile(r'Traceback \(most recent|File "[^"]+", line \d+|(?<![\w.])/(?:[\w.-]+/){2,}[\w.-]+\.py')


@dataclass
class Sample:
    """One request: start and end (s since the soak began), HTTP status (0 = no answer), error text."""

    mode: str
    start: float
    end: float
    status: int
    error: str = ""
    retry_after: str = ""
    leak: bool = False
    attempts: int = 1


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="sam3-bench soak", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--url", default="http://127.0.0.1:8080", help="REST gateway base URL")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--images", type=int, default=10, help="distinct images in the pool")
    p.add_argument("--kill", metavar="MODEL", help="SIGKILL the Python stub(s) of this model mid-way, e.g. sam3_vision")
    p.add_argument("--kill-at", type=float, default=0.5, help="fraction of the requests started before the kill")
    p.add_argument(
        "--triton-pid", type=int, help="tritonserver whose stubs to kill and measure (default: the only one)"
    )
    p.add_argument("--warmup-fraction", type=float, default=0.25, help="requests before RSS growth is measured")
    p.add_argument("--rss-interval", type=float, default=1.0, help="seconds between RSS samples")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    p.add_argument(
        "--retries",
        type=int,
        default=0,
        help="retry a 503 up to this many times after its Retry-After, as a well-behaved client (0)",
    )
    p.add_argument("--token", default=os.environ.get("SAM3_API_KEY"), help="bearer token, if the gateway needs one")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write the JSON report here")
    args = p.parse_args(argv)
    if args.requests < 1 or args.concurrency < 1 or args.images < 1 or not 0 < args.kill_at < 1:
        p.error("--requests, --concurrency and --images must be >= 1 and --kill-at in (0, 1)")
    return args


# ---------------------------------------------------------------- requests


def image_pool(count: int, seed: int) -> list[tuple[str, int, int]]:
    """``count`` synthetic PNG images (blobs on a gradient, several sizes) as (base64, height, width)."""
    rng, pool = np.random.default_rng(seed), []
    for i in range(count):
        h, w = SIZES[i % len(SIZES)]
        image = Image.fromarray(np.linspace(0, 255, w, dtype=np.uint8)[None, :, None].repeat(h, 0).repeat(3, 2))
        draw = ImageDraw.Draw(image)
        for _ in range(4):
            x0, y0 = rng.integers(0, w // 2), rng.integers(0, h // 2)
            draw.ellipse(
                [x0, y0, x0 + rng.integers(20, w // 2), y0 + rng.integers(20, h // 2)],
                fill=tuple(int(v) for v in rng.integers(0, 255, 3)),
            )
        buf = io.BytesIO()
        image.save(buf, "PNG")
        pool.append((base64.b64encode(buf.getvalue()).decode(), h, w))
    return pool


def request_body(i: int, pool, rng: np.random.Generator) -> tuple[str, dict]:
    """(mode, JSON body) of request ``i``: a mode drawn from MIX on an image of the pool."""
    modes, weights = zip(*MIX)
    mode = str(rng.choice(modes, p=np.array(weights) / sum(weights)))
    image, h, w = pool[i % len(pool)]
    x, y = float(rng.uniform(0, w)), float(rng.uniform(0, h))
    fields = {
        "text": {"text": str(rng.choice(CONCEPTS))},
        "point": {"point_coords": [[x, y]], "point_labels": [1]},
        "box": {"box_coords": [x / 2, y / 2, (x + w) / 2, (y + h) / 2]},
        "auto": {"points_per_side": 4},
    }[mode]
    return mode, {"image": image, "mode": mode, "mask_format": "rle", **fields}


def send(url: str, body: dict, timeout_s: float, token: str | None) -> tuple[int, bytes, str]:
    """(status, body, Retry-After) of one POST; status 0 with the reason when nothing answered."""
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
    request = urllib.request.Request(url.rstrip("/") + "/segment", json.dumps(body).encode(), headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, response.read(), ""
    except urllib.error.HTTPError as err:
        return err.code, err.read(), err.headers.get("Retry-After", "")
    except OSError as err:
        return 0, str(err).encode(), ""


def health_status(url: str) -> int:
    """HTTP status of GET /health (0 when nothing answers)."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return 0


# ---------------------------------------------------------------- processes


def triton_pids() -> list[int]:
    """Process ids of the tritonserver processes on this machine."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv0 = (entry / "cmdline").read_bytes().split(b"\0")[0] if entry.name.isdigit() else b""
        except OSError:
            continue
        if argv0.endswith(b"tritonserver"):
            found.append(int(entry.name))
    return found


def _flag(pid: int, prefix: str) -> str:
    """The value of ``prefix...`` in a process's command line ('' when absent or gone)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return ""
    return next((a[len(prefix) :] for a in args if a.startswith(prefix)), "")


def rss_kb(pid: int) -> int | None:
    """Resident memory of ``pid`` in KiB (None when it is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else None


def processes(server_pid: int) -> dict[str, int]:
    """{"tritonserver": pid, <stub instance name>: pid, ...} of one server."""
    named = {"tritonserver": server_pid}
    for pid, args in stub_processes(server_pid).items():
        names = [a for a in args[1:] if INSTANCE.fullmatch(a) and not a.startswith("triton_python_backend")]
        named[names[0] if names else str(pid)] = pid
    return named


def kill_stubs(server_pid: int, model: str) -> list[int]:
    """SIGKILL every stub of ``model`` under ``server_pid``; the pids killed (ValueError if none)."""
    names = [model] + [n for n in _instance_models(server_pid) if n != model]
    pids = stub_pids(server_pid, names)[model]
    if not pids:
        raise ValueError(f"no Python backend stub of model {model!r} under tritonserver {server_pid}")
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return pids


def _instance_models(server_pid: int) -> list[str]:
    """Model names guessed from instance names (``sam3_vision_0_0`` → ``sam3_vision``): longest wins."""
    return sorted({re.sub(r"(_\d+)+$", "", name) for name in processes(server_pid) if name != "tritonserver"})


class RssSampler:
    """Samples RSS (KiB) of tritonserver and every stub every ``interval_s`` in a daemon thread."""

    def __init__(self, server_pid: int | None, interval_s: float, t0: float):
        self.server_pid, self.interval_s, self.t0 = server_pid, interval_s, t0
        self.samples: list[dict] = []
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss")

    def start(self) -> "RssSampler":
        if self.server_pid is not None:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._halt.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _run(self) -> None:
        while not self._halt.wait(self.interval_s):
            named = processes(self.server_pid)
            kb = {name: rss_kb(pid) for name, pid in named.items()}
            self.samples.append(
                {
                    "t": round(time.monotonic() - self.t0, 2),
                    "pid": named,
                    "rss_kb": {k: v for k, v in kb.items() if v is not None},
                }
            )


# ---------------------------------------------------------------- the run


class Soak:
    """One soak run (see the module doc); :meth:`run` returns the report dict."""

    def __init__(self, args):
        self.args = args
        self.pool = image_pool(args.images, args.seed)
        self.samples: list[Sample] = []
        self.started = self.retried = 0
        self.kill: dict = {}
        self._lock = threading.Lock()
        self.t0 = time.monotonic()

    def run(self) -> dict:
        args = self.args
        server_pid = self._server_pid()
        rss = RssSampler(server_pid, args.rss_interval, self.t0).start()
        watcher = threading.Thread(target=self._kill_and_watch, args=(server_pid,), daemon=True) if args.kill else None
        if watcher is not None:
            watcher.start()
        rngs = [np.random.default_rng(args.seed + 1 + i) for i in range(args.requests)]
        with ThreadPoolExecutor(args.concurrency) as pool:
            list(pool.map(lambda i: self._one(i, rngs[i]), range(args.requests)))
        wall = time.monotonic() - self.t0
        if watcher is not None:
            watcher.join(120)
        rss.stop()
        report = build_report(args, self.samples, self.kill, rss.samples, wall)
        report["errors"]["503_retried"] = self.retried
        return report

    def _server_pid(self) -> int | None:
        if self.args.triton_pid:
            return self.args.triton_pid
        pids = triton_pids()
        if len(pids) == 1:
            return pids[0]
        if self.args.kill:
            ports = {pid: _flag(pid, "--grpc-port=") for pid in pids}
            raise SystemExit(
                f"sam3-bench soak: {len(pids)} tritonserver processes here (pid: gRPC port {ports}): pass --triton-pid"
            )
        return None

    def _one(self, i: int, rng) -> None:
        mode, body = request_body(i, self.pool, rng)
        with self._lock:
            self.started += 1
        start, leak = time.monotonic() - self.t0, False
        for attempt in range(1, self.args.retries + 2):
            status, data, retry = send(self.args.url, body, self.args.timeout, self.args.token)
            text = data.decode(errors="replace")
            leak = leak or bool(LEAK.search(text))
            if status != 503 or attempt > self.args.retries:
                break
            self._count_retry()
            time.sleep(min(30, int(retry) if retry.isdigit() else 1))
        end = time.monotonic() - self.t0
        error = "" if status == 200 else text[:300]
        sample = Sample(mode, round(start, 4), round(end, 4), status, error, retry, leak, attempt)
        with self._lock:
            self.samples.append(sample)

    def _count_retry(self) -> None:
        with self._lock:
            self.retried += 1

    def _kill_and_watch(self, server_pid: int) -> None:
        while self.started < self.args.kill_at * self.args.requests:
            time.sleep(0.01)
        pids = kill_stubs(server_pid, self.args.kill)
        at = time.monotonic() - self.t0
        self.kill = {"model": self.args.kill, "pids": pids, "at_s": round(at, 3)}
        self.kill |= watch_health(self.args.url, self.t0, limit_s=120)


def watch_health(url: str, t0: float, limit_s: float) -> dict:
    """Poll /health every 50 ms: when it first said not-ready and when it was ready again (s since t0)."""
    not_ready = ready_again = None
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        status, now = health_status(url), round(time.monotonic() - t0, 3)
        if status != 200 and not_ready is None:
            not_ready = now
        if status == 200 and not_ready is not None:
            ready_again = now
            break
        time.sleep(0.05)
    return {"health_not_ready_s": not_ready, "health_ready_again_s": ready_again}


# ---------------------------------------------------------------- the report


def percentile(values, q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if len(values) else None


def build_report(args, samples: list[Sample], kill: dict, rss: list[dict], wall_s: float) -> dict:
    """The JSON report (see the module doc)."""
    ok = [1e3 * (s.end - s.start) for s in samples if s.status == 200]
    failed = [s for s in samples if s.status != 200]
    window = recovery_window(kill)
    inside = [s for s in failed if window and s.end >= window[0] and s.start <= window[1]]
    by_status: dict[str, int] = {}
    for s in failed:
        by_status[str(s.status)] = by_status.get(str(s.status), 0) + 1
    return {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "token"},
        "requests": len(samples),
        "ok": len(ok),
        "wall_s": round(wall_s, 2),
        "throughput_rps": round(len(samples) / wall_s, 2),
        "latency_ms": {"p50": percentile(ok, 50), "p99": percentile(ok, 99), "max": percentile(ok, 100)},
        "errors": {
            "total": len(failed),
            "inside_recovery_window": len(inside),
            "outside_recovery_window": len(failed) - len(inside),
            "by_status": by_status,
            "503_without_retry_after": sum(s.status == 503 and not s.retry_after for s in failed),
            "examples": [asdict(s) for s in failed[:5]],
        },
        "kill": kill | recovery_figures(kill, samples),
        "bodies_with_traceback_or_path": sum(s.leak for s in samples),
        "rss": rss_report(rss, samples, args.warmup_fraction, kill),
    }


def recovery_window(kill: dict) -> tuple[float, float] | None:
    """[kill time, /health ready again] in s since the start (end infinite when it never was); None: no kill."""
    if not kill.get("at_s"):
        return None
    return kill["at_s"], kill.get("health_ready_again_s") or float("inf")


def recovery_figures(kill: dict, samples: list[Sample]) -> dict:
    """Recovery seconds (kill → /health ready again) and kill → end of the last failed request."""
    if not kill.get("at_s"):
        return {}
    at, again = kill["at_s"], kill.get("health_ready_again_s")
    failed_after = [s.end for s in samples if s.status != 200 and s.end >= at]
    return {
        "recovery_s": round(again - at, 3) if again else None,
        "last_failure_after_kill_s": round(max(failed_after) - at, 3) if failed_after else None,
    }


def rss_report(rss: list[dict], samples: list[Sample], warmup_fraction: float, kill: dict) -> dict:
    """RSS growth (%) per process from the end of the warm-up to the last sample (processes that lived
    through both), and from RECOVERY_SETTLE_S after the recovery to the last sample (every process)."""
    if not rss:
        return {"samples": [], "growth_pct": {}}
    ends = sorted(s.end for s in samples)
    warm_t = ends[min(len(ends) - 1, int(warmup_fraction * len(ends)))] if ends else 0.0
    base, last = next((r for r in rss if r["t"] >= warm_t), rss[0]), rss[-1]
    growth = _growth(base, last)
    total = sum(base["rss_kb"][n] for n in growth), sum(last["rss_kb"][n] for n in growth)
    report = {
        "from_s": base["t"],
        "to_s": last["t"],
        "growth_pct": growth,
        "max_growth_pct": max(growth.values(), default=None),
        "total_growth_pct": round(100.0 * (total[1] - total[0]) / total[0], 2) if total[0] else None,
        "restarted": sorted(n for n in base["pid"] if base["pid"][n] != last["pid"].get(n)),
    }
    healed = kill.get("health_ready_again_s")
    after = next((r for r in rss if healed and r["t"] >= healed + RECOVERY_SETTLE_S), None)
    if after is not None and after is not last:
        report["after_recovery"] = {"from_s": after["t"], "growth_pct": _growth(after, last)}
        report["after_recovery"]["max_growth_pct"] = max(report["after_recovery"]["growth_pct"].values(), default=None)
    return report | {"samples": rss}


def _growth(base: dict, last: dict) -> dict[str, float]:
    """{process: % RSS growth from ``base`` to ``last``} for processes with the same pid in both samples."""
    return {
        name: round(100.0 * (last["rss_kb"][name] - kb) / kb, 2)
        for name, kb in base["rss_kb"].items()
        if name in last["rss_kb"] and base["pid"].get(name) == last["pid"].get(name) and kb
    }


def summary(report: dict) -> str:
    """A few lines for the terminal."""
    e, lat, kill, rss = report["errors"], report["latency_ms"], report["kill"], report["rss"]
    lines = [
        f"{report['requests']} requests, {report['ok']} ok, {report['throughput_rps']} req/s, "
        f"p50 {lat['p50']} ms, p99 {lat['p99']} ms",
        f"errors {e['total']} (inside the recovery window {e['inside_recovery_window']}, outside "
        f"{e['outside_recovery_window']}) by status {e['by_status']}; 503 without Retry-After: "
        f"{e['503_without_retry_after']}; 503s retried after Retry-After: {e.get('503_retried', 0)}; "
        f"bodies with a traceback or path: {report['bodies_with_traceback_or_path']}",
    ]
    if kill:
        lines.append(
            f"killed {kill['model']} at {kill['at_s']} s; /health not ready at {kill['health_not_ready_s']} s, "
            f"ready again at {kill['health_ready_again_s']} s: recovery {kill.get('recovery_s')} s"
        )
    if rss.get("growth_pct"):
        lines.append(
            f"RSS growth {rss['from_s']} s → {rss['to_s']} s: max {rss['max_growth_pct']}%, "
            f"total {rss['total_growth_pct']}% (restarted: {', '.join(rss['restarted']) or 'none'})"
        )
    if rss.get("after_recovery"):
        after = rss["after_recovery"]
        lines.append(
            f"RSS growth after the recovery ({after['from_s']} s → {rss['to_s']} s, every process): "
            f"max {after['max_growth_pct']}%"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if health_status(args.url) == 0:
        print(f"sam3-bench soak: cannot reach the gateway at {args.url}/health", file=sys.stderr)
        return 1
    report = Soak(args).run()
    print(summary(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1))
        print(f"json: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
