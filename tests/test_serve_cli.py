"""`sam3-triton serve` as a user runs it: a real process, ready banner, a request, SIGTERM, exit code."""

from __future__ import annotations

import base64
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from sam3_spec import SAM3_BATCHING
from server.cli import _batching, parse_args
from server.triton import free_port
from tests.pbtxt import parse_config_text

READY = "sam3-triton is ready"


def start_serve(artifacts, tmp_path, *extra):
    ports = [str(free_port()) for _ in range(4)]
    command = [
        sys.executable,
        "-m",
        "server.cli",
        "serve",
        "--model",
        "tiny",
        "--artifacts",
        str(artifacts),
        "--repo",
        str(tmp_path / "repo"),
        "--http-port",
        ports[0],
        "--grpc-port",
        ports[1],
        "--metrics-port",
        ports[2],
        "--gateway-port",
        ports[3],
        *extra,
    ]
    log = open(tmp_path / "serve.log", "w+")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True), log, int(ports[3])


def wait_for(process, log, text: str, timeout_s: float = 240) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        log.seek(0)
        output = log.read()
        if text in output or process.poll() is not None:
            return output
        time.sleep(0.5)
    process.kill()
    raise AssertionError(f"no {text!r} within {timeout_s}s")


def processes_using(path) -> list[str]:
    """Command lines of the live processes that name ``path`` (tritonserver and its stubs name the repo)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(path) in cmdline:
            found.append(cmdline[:200])
    return found


def test_serve_prints_endpoints_answers_and_stops_on_sigterm(tiny_artifacts, tmp_path, astronaut_png):
    """With the bf16 gate run at this start (no precision report yet), as on a first start: SIGTERM must
    still stop tritonserver and exit 0 (the gate's OpenVINO threads once made serve die of SIGSEGV).
    The queue flags put their policy into sam3's config."""
    artifacts = tmp_path / "artifacts"
    shutil.copytree(tiny_artifacts, artifacts, ignore=shutil.ignore_patterns("precision_report.json"))
    process, log, gateway_port = start_serve(artifacts, tmp_path, "--queue-size", "16", "--queue-timeout-ms", "30000")
    try:
        output = wait_for(process, log, READY)
        assert READY in output and "Triton gRPC" in output and f"127.0.0.1:{gateway_port}" in output, output
        policy = parse_config_text((tmp_path / "repo" / "sam3" / "config.pbtxt").read_text())["dynamic_batching"]
        assert policy["default_queue_policy"] == {
            "timeout_action": "REJECT",
            "default_timeout_microseconds": 30_000_000,
            "allow_timeout_override": True,
            "max_queue_size": 16,
        }
        body = json.dumps(
            {"image": base64.b64encode(astronaut_png).decode(), "mode": "box", "box_coords": [100, 30, 380, 500]}
        ).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{gateway_port}/", body, {"Content-Type": "application/json"}
        )
        answer = json.loads(urllib.request.urlopen(request, timeout=60).read())
        assert answer["image_shape"] == [512, 512] and len(answer["mask"]) == 512
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
    output = wait_for(process, log, "")
    assert "bf16 gate" in output or "cpu runtime openvino: vision fp32" in output, output  # the gate ran (bf16 CPUs)
    assert code == 0, output
    assert not processes_using(tmp_path / "repo"), processes_using(tmp_path / "repo")


@pytest.mark.parametrize("flag", ["--queue-size", "--queue-timeout-ms"])
@pytest.mark.parametrize("value", ["0", "-3", "1.5", "many"])
def test_queue_flags_take_whole_numbers_of_at_least_one(flag, value, capsys):
    with pytest.raises(SystemExit):
        parse_args(["serve", flag, value])
    assert "must be a whole number ≥ 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    "value, heads", [("none", ()), ("prompt", ("prompt",)), ("prompt, concept", ("prompt", "concept"))]
)
def test_local_heads_flag(value, heads):
    assert parse_args(["serve", "--local-heads", value]).local_heads == heads
    assert parse_args(["serve"]).local_heads is None  # the repository's default


def test_no_queue_flag_leaves_the_policy_out():
    assert _batching(parse_args(["serve"])) == SAM3_BATCHING


def test_a_model_that_fails_to_load_exits_nonzero_with_the_reason(tiny_artifacts, tmp_path):
    broken = tmp_path / "artifacts"
    shutil.copytree(tiny_artifacts, broken, ignore=shutil.ignore_patterns("tiny-checkpoint"))
    (broken / "prompt.onnx").write_bytes(b"this is not an onnx graph")
    process, log, _ = start_serve(broken, tmp_path)
    code = process.wait(timeout=240)
    log.seek(0)
    output = log.read()
    assert code != 0 and "sam3_prompt" in output and READY not in output, output[-3000:]


def test_a_taken_gateway_port_stops_serve_before_it_builds_anything(tiny_artifacts, tmp_path):
    """Its port taken, the gateway could not start: serve used to fail after starting Triton (a traceback,
    and tritonserver left running); a taken Triton port let another server answer for ours. Now serve names
    the taken ports first, and starts nothing."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process, log, _ = start_serve(tiny_artifacts, tmp_path, "--gateway-port", str(port))
        code = process.wait(60)
    log.seek(0)
    text = log.read()
    assert code == 2 and f"already in use on 127.0.0.1: --gateway-port {port}." in text, text
    assert "Traceback" not in text and not (tmp_path / "repo").exists()
