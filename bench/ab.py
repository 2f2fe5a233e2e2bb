"""``sam3-bench ab``: two running servers side by side, for a before/after comparison on a machine whose
speed drifts (on our shared 2-core VM the same code ran up to 2x slower from one minute to the next, so
two benchmark runs one after the other compare the minutes more than the code).

    sam3-bench ab --a 127.0.0.1:8001 --b 127.0.0.1:9001 --modes point,text --rounds 40 --json ab.json

Each round sends one request of each mode to A and to B with the same inputs, one at a time (A first in
even rounds, B first in odd ones), so a slow minute hits both sides alike. ``--cache cold`` (default):
every request has a new image_id (decode and vision run); ``warm``: each photo is embedded once per side
and every request reuses it; ``own`` (with ``--clients``): each client clicks an embedded image of its own,
so no two clients' requests share a head call. Per mode: each side's median latency (ms), the median of the
per-round ratios B/A with a 95 % bootstrap interval (> 1: B is slower), and the share of rounds A was faster.
Text thresholds are calibrated once on A (``--keep`` detections per concept) and sent to both.

``--background auto`` (or any mode) measures the modes under load: in each round a side is measured in a
phase of its own, while ``--background-clients`` clients send that mode's requests to it back to back on an
embedded image, and ``--per-phase`` requests of the measured mode are timed one after another; the round's
latency on that side is the phase's median. Also reported: each side's background requests per second.
    sam3-bench ab --a 127.0.0.1:8001 --b 127.0.0.1:9001 --modes point --cache warm --background auto

``--clients 8`` compares throughput: in each round a side gets ``--clients`` clients at once, each sending
``--per-phase`` requests back to back (bench.timing.run_load); the round's figure is the wall time per
request (1 / requests per second), paired like a latency (B/A > 1: B serves fewer requests per second).
    sam3-bench ab --a 127.0.0.1:8001 --b 127.0.0.1:9001 --modes point --cache warm --clients 8 --per-phase 12
Exit status: 0 done, 1 a server unreachable, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

from bench.progress import log
from bench.sweep import embed_own_images, own_image_request, sweep_request
from bench.timing import run_load, timed
from bench.workloads import Workloads, box_around_astronaut, click_points, load_images, thresholds_for
from client.api import Sam3Client

AB_MODES = ("text", "point", "box", "auto")
BOOTSTRAP = 2000  # resamples of the rounds for the interval of the median ratio


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="sam3-bench ab", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--a", required=True, help="gRPC host:port of server A (e.g. before a change)")
    p.add_argument("--b", required=True, help="gRPC host:port of server B (e.g. after it)")
    p.add_argument("--modes", default="text,point,box", help="comma list of " + ",".join(AB_MODES))
    p.add_argument("--rounds", type=int, default=40, help="requests per mode and server")
    p.add_argument("--warmup", type=int, default=2, help="unmeasured rounds first")
    p.add_argument(
        "--cache",
        choices=("cold", "warm", "own"),
        default="cold",
        help="a new image per request, one for all, or (with --clients) one per client",
    )
    p.add_argument("--keep", type=int, default=3, help="text detections per concept the thresholds keep")
    p.add_argument("--points-per-side", type=int, default=8, help="auto mode grid")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    p.add_argument("--background", choices=AB_MODES, help="measure under this mode's load (embedded image)")
    p.add_argument("--background-clients", type=int, default=2, help="clients sending --background (2)")
    p.add_argument("--per-phase", type=int, default=5, help="requests per phase (--background) or per client (5)")
    p.add_argument("--clients", type=int, default=1, help="concurrent clients per side: throughput (1: latency)")
    p.add_argument("--json", type=Path, help="write the JSON report here")
    args = p.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in args.modes if m not in AB_MODES]
    if bad or not args.modes:
        p.error(f"--modes must be a comma list of {', '.join(AB_MODES)}; got {bad or 'none'}")
    if args.rounds < 2 or args.warmup < 0:
        p.error("--rounds must be at least 2 and --warmup at least 0")
    if args.background_clients < 1 or args.per_phase < 1 or args.clients < 1:
        p.error("--background-clients, --per-phase and --clients must be at least 1")
    if args.cache == "own" and (args.clients < 2 or args.background):
        p.error(
            "--cache own gives each of --clients (at least 2) an image of its own: give --clients, not --background"
        )
    if args.clients > 1 and args.background:
        p.error("--clients and --background measure different things: give one of them")
    args.threshold = "auto"  # thresholds_for: calibrated on A
    return args


def paired(a_seconds, b_seconds, seed: int = 0) -> dict:
    """Latencies of one mode on A and B, round by round (seconds) → medians (ms), the median B/A ratio with
    its 95 % bootstrap interval over rounds, and the share of rounds A was faster."""
    a, b = np.asarray(a_seconds, np.float64), np.asarray(b_seconds, np.float64)
    ratios = b / a
    picks = np.random.default_rng(seed).integers(0, len(ratios), (BOOTSTRAP, len(ratios)))
    low, high = np.percentile(np.median(ratios[picks], axis=1), [2.5, 97.5])
    return {
        "rounds": int(len(ratios)),
        "a_p50_ms": round(float(np.median(a)) * 1e3, 3),
        "b_p50_ms": round(float(np.median(b)) * 1e3, 3),
        "ratio_b_over_a": round(float(np.median(ratios)), 4),
        "ratio_ci95": [round(float(low), 4), round(float(high), 4)],
        "a_faster_share": round(float(np.mean(a < b)), 3),
    }


def run_mode(clients: dict, work: Workloads, mode: str, args) -> dict:
    """Warm-up, then ``args.rounds`` alternating rounds of ``mode``; the paired figures."""
    if args.cache == "own":
        request = own_image_request(work, mode, args.per_phase)
        for client in clients.values():  # embedded before any round
            embed_own_images(work, mode, request, client, args.clients, args.per_phase)
    else:
        request = sweep_request(work, mode, args.cache)
    if args.background:
        return run_under_load(clients, work, request, args)
    if args.clients > 1:
        return run_concurrent(clients, request, args)
    times = {"a": [], "b": []}
    for i in range(-args.warmup, args.rounds):
        order = ("a", "b") if i % 2 == 0 else ("b", "a")
        for side in order:
            seconds, _ = timed(request, clients[side], i)
            if i >= 0:
                times[side].append(seconds)
    return paired(times["a"], times["b"])


class Background:
    """While the ``with`` block runs, ``count`` clients of their own send ``request(client, i)`` to ``url``
    back to back; ``rate``: the requests they finished per second of the block. A failed request stops its
    client, and the block's end raises it."""

    def __init__(self, url: str, request, count: int, timeout_s: float, settle_s: float = 0.3):
        self.clients = [Sam3Client(url, "grpc", timeout_s=timeout_s) for _ in range(count)]
        self.request, self.settle_s, self.stop, self.done, self.errors = request, settle_s, threading.Event(), [], []
        self.threads = [threading.Thread(target=self._send, args=(c,), daemon=True) for c in self.clients]
        self.rate = 0.0

    def _send(self, client) -> None:
        i = 0
        try:
            while not self.stop.is_set():
                self.request(client, i)
                i += 1
        except Exception as err:  # noqa: BLE001 - reported by __exit__
            self.errors.append(f"{type(err).__name__}: {err}")
        self.done.append(i)

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        time.sleep(self.settle_s)  # the load is under way before the first timed request
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        elapsed = time.perf_counter() - self.start
        self.stop.set()
        for thread in self.threads:
            thread.join()
        for client in self.clients:
            client.close()
        self.rate = sum(self.done) / (elapsed + self.settle_s)
        if self.errors and exc[0] is None:
            raise RuntimeError(f"a background request failed: {self.errors[0]}")


def run_under_load(clients: dict, work: Workloads, request, args) -> dict:
    """``run_mode`` with ``--background``: per round and side a phase under that side's background load; the
    paired phase medians, and each side's median background rate (requests/s)."""
    background = sweep_request(work, args.background, "warm")
    times, rates = {"a": [], "b": []}, {"a": [], "b": []}
    for i in range(-args.warmup, args.rounds):
        for side in ("a", "b") if i % 2 == 0 else ("b", "a"):
            with Background(clients[side].url, background, args.background_clients, args.timeout) as load:
                phase = [timed(request, clients[side], i * args.per_phase + j)[0] for j in range(args.per_phase)]
            if i >= 0:
                times[side].append(float(np.median(phase)))
                rates[side].append(load.rate)
    return paired(times["a"], times["b"]) | {
        "background": f"{args.background_clients} x {args.background}",
        "a_background_rps": round(float(np.median(rates["a"])), 3),
        "b_background_rps": round(float(np.median(rates["b"])), 3),
    }


def run_concurrent(clients: dict, request, args) -> dict:
    """``run_mode`` with ``--clients``: per round and side, ``--clients`` clients at once; the paired wall time
    per request, each side's median requests/s and the failed requests (RuntimeError if any)."""
    per_request, rates = {"a": [], "b": []}, {"a": [], "b": []}
    for i in range(-args.warmup, args.rounds):
        for side in ("a", "b") if i % 2 == 0 else ("b", "a"):
            load = run_load(clients[side], request, args.clients, args.per_phase)
            if load.errors:
                raise RuntimeError(f"server {side.upper()}: {len(load.errors)} request(s) failed: {load.errors[0]}")
            if i >= 0:
                count = args.clients * args.per_phase
                per_request[side].append(load.wall_s / count)
                rates[side].append(count / load.wall_s)
    return paired(per_request["a"], per_request["b"]) | {
        "clients": args.clients,
        "a_rps": round(float(np.median(rates["a"])), 3),
        "b_rps": round(float(np.median(rates["b"])), 3),
    }


def report_lines(report: dict) -> list[str]:
    """The table: one line per mode."""
    lines = [f"A {report['a']}  vs  B {report['b']}  ({report['cache']} images, {report['rounds']} rounds each)"]
    for mode, r in report["modes"].items():
        low, high = r["ratio_ci95"]
        lines.append(
            f"  {mode:6} A {r['a_p50_ms']:8.1f} ms  B {r['b_p50_ms']:8.1f} ms  B/A {r['ratio_b_over_a']:.3f} "
            f"(95 % {low:.3f}-{high:.3f}), A faster in {100 * r['a_faster_share']:.0f} % of rounds" + _extra(r)
        )
    return lines


def _extra(r: dict) -> str:
    """The end of a mode's line: the background rates, or the throughput at ``--clients``."""
    if "background" in r:
        return f"; under {r['background']}: A {r['a_background_rps']:.2f} req/s, B {r['b_background_rps']:.2f} req/s"
    if "clients" in r:
        return f"; wall time per request at {r['clients']} clients: A {r['a_rps']:.2f} req/s, B {r['b_rps']:.2f} req/s"
    return ""


def main(argv=None) -> int:
    args = parse_args(argv)
    clients = {side: Sam3Client(getattr(args, side), "grpc", timeout_s=args.timeout) for side in ("a", "b")}
    try:
        for side, client in clients.items():
            if not client.is_ready():
                print(f"sam3-bench ab: server {side.upper()} at {client.url} is not ready", file=sys.stderr)
                return 1
        images = load_images()
        work = Workloads(
            images,
            thresholds_for(clients["a"], images, args),
            args.points_per_side,
            0.0,
            0.0,
            click_points(10),
            box_around_astronaut(),
        )
        modes = {}
        for mode in args.modes:
            log(f"ab {mode}: {args.warmup} + {args.rounds} rounds")
            modes[mode] = run_mode(clients, work, mode, args)
    except RuntimeError as err:  # a background or concurrent request failed
        print(f"sam3-bench ab: {err}", file=sys.stderr)
        return 1
    finally:
        for client in clients.values():
            client.close()
    report = {"a": args.a, "b": args.b, "cache": args.cache, "rounds": args.rounds, "modes": modes}
    print("\n".join(report_lines(report)))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0
