"""`sam3-client segment` against the real tiny-model server: in-process (client.cli.main) and once as a process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.cli import main as bench_main
from client.cli import main

ROOT = Path(__file__).resolve().parents[1]
JSON_KEYS = {"image_shape", "mode", "concepts", "count", "detections"}
DETECTION_KEYS = {"index", "label", "name", "score", "box", "iou_scores", "stability_score", "area", "mask"}


@pytest.fixture(scope="module")
def coffee_path(coffee_jpeg, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "coffee.jpg"
    path.write_bytes(coffee_jpeg)
    return path


def check_overlay(out: Path, image: Path) -> None:
    """The overlay exists, has the image's size and is not the image itself."""
    original = np.asarray(Image.open(image).convert("RGB"))
    overlay = np.asarray(Image.open(out).convert("RGB"))
    assert overlay.shape == original.shape
    assert np.abs(overlay.astype(int) - original.astype(int)).mean() > 1.0


def test_text_mode_writes_overlay_and_json(sam3_server, coffee_path, tmp_path, capsys):
    out, result = tmp_path / "overlay.png", tmp_path / "result.json"
    code = main(
        [
            "segment",
            str(coffee_path),
            "--text",
            "cup",
            "--text",
            "spoon",
            "--threshold",
            "0.1",
            "--url",
            sam3_server.grpc_url,
            "--out",
            str(out),
            "--json",
            str(result),
        ]
    )
    assert code == 0
    check_overlay(out, coffee_path)
    data = json.loads(result.read_text())
    assert set(data) == JSON_KEYS and data["mode"] == "text" and data["concepts"] == ["cup", "spoon"]
    assert data["image_shape"] == [400, 600] and data["count"] == len(data["detections"]) > 0
    assert set(data["detections"][0]) == DETECTION_KEYS
    assert data["detections"][0]["mask"]["size"] == [400, 600]
    table = capsys.readouterr().out
    assert "label" in table and "area" in table and " cup " in table


def test_point_mode_over_http(sam3_server, coffee_path, tmp_path, capsys):
    out = tmp_path / "points.png"
    code = main(
        [
            "segment",
            str(coffee_path),
            "--point",
            "300,150",
            "--point",
            "20,20,0",
            "--protocol",
            "http",
            "--url",
            f"http://{sam3_server.http_address}",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    check_overlay(out, coffee_path)
    assert "1 detection(s), mode point" in capsys.readouterr().out


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--auto", "--text", "cup"], "--auto segments everything"),
        (["--text", "cup", "--point", "1,2"], "--point does not combine with --text"),
        ([], "say what to segment"),
        (["--box", "1,2,3,4,1"], "only applies to exemplar boxes"),
        (["--point", "1,2,3,4"], "is not X,Y[,LABEL]"),
    ],
    ids=["auto+text", "text+point", "nothing", "box-label", "bad-point"],
)
def test_bad_flags_exit_2(coffee_path, flags, words, capsys):
    with pytest.raises(SystemExit) as caught:
        main(["segment", str(coffee_path), *flags])
    assert caught.value.code == 2 and words in capsys.readouterr().err


def test_server_error_exits_1_with_its_message(sam3_server, coffee_path, capsys):
    code = main(["segment", str(coffee_path), "--point", "1000,10", "--url", sam3_server.grpc_url])
    assert code == 1 and "outside the image" in capsys.readouterr().err


def test_subprocess_box_mode(sam3_server, coffee_path, tmp_path):
    out, result = tmp_path / "box.png", tmp_path / "box.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "client.cli",
            "segment",
            str(coffee_path),
            "--box",
            "150,50,450,300",
            "--url",
            sam3_server.grpc_url,
            "--out",
            str(out),
            "--json",
            str(result),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "mode box" in proc.stdout
    check_overlay(out, coffee_path)
    data = json.loads(result.read_text())
    assert set(data) == JSON_KEYS and data["count"] == 1 and data["mode"] == "box"


def test_sam3_bench_dispatches_to_the_benchmark_and_the_soak(capsys):
    for argv, prog in ((["--help"], "sam3-bench"), (["soak", "--help"], "sam3-bench soak")):
        with pytest.raises(SystemExit) as caught:  # each parses its own flags
            bench_main(argv)
        assert caught.value.code == 0 and f"usage: {prog}" in capsys.readouterr().out
