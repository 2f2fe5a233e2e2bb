"""modal_triton.py offline: no Modal token, no network, no GPU.

What Modal exposes before deployment is checked on the objects themselves: the GPU, image,
Volume and Secrets of each function/class come from their FunctionSpec, and the web endpoints
from the class's partial functions. Both are modal 1.6 internals (``_spec_``,
``_get_class_service_function``, ``_get_partial_functions``): if modal renames them these tests
fail loudly rather than pass. Timeouts, autoscaling and concurrency are only kept inside
Modal's loader closures, so for those we assert (with the ast of the source) that the
decorators are fed from the module constants, and check the constants themselves.

The pure helpers (build layout, markers, request/response shaping, COCO assembly) are tested
for real; the COCO output is loaded and scored by pycocotools.
"""

from __future__ import annotations

import ast
import base64
import json
import subprocess
import sys
from pathlib import Path

import modal
import modal.app
import numpy as np
import pytest
from modal._utils.async_utils import synchronizer
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from test_repository import TINY, make_fake_artifacts  # tests/ is on sys.path (pytest prepend import mode)

import modal_triton as mt
from bench.args import parse_args
from client.results import segmentation_from_outputs
from deploy import builds, checks, images, labels
from export import trt
from export.manifest import sha256
from sam3_spec import Dims
from server.triton import cuda_pool_args, cuda_pool_bytes, server_command

ROOT = Path(__file__).resolve().parents[1]
SOURCE = (ROOT / "modal_triton.py").read_text()
pytestmark = pytest.mark.timeout(120)


def _spec(obj):
    """The FunctionSpec of a modal Function or of a Cls's service function (modal 1.6 internals).

    It holds Modal's internal objects; :func:`_raw` unwraps ours to compare identities.
    """
    function = obj._get_class_service_function() if hasattr(obj, "_get_class_service_function") else obj
    return function._spec_


def _raw(obj):
    return synchronizer._translate_in(obj)


def image_commands(image) -> list[str]:
    """Every Dockerfile command of a modal Image and its base images, in build order (modal 1.6
    internals: the base images are the Image's _deps(), its commands come from the
    ``dockerfile_function`` its loader closes over)."""
    raw = _raw(image) if type(image).__name__ == "Image" else image
    out = [c for dep in raw._deps() if type(dep).__name__ == "_Image" for c in image_commands(dep)]
    load = raw._load
    cells = dict(zip(load.__code__.co_freevars, (c.cell_contents for c in load.__closure__ or ())))
    if cells.get("dockerfile_function") is not None:
        out += cells["dockerfile_function"]("2025.06").commands
    return out


def _decorator_keywords(owner: str, decorator: str) -> dict[str, str]:
    """{keyword: source text} of ``@<decorator>(...)`` on the top-level def/class ``owner``."""
    node = next(n for n in ast.parse(SOURCE).body if getattr(n, "name", None) == owner)
    call = next(d for d in node.decorator_list if isinstance(d, ast.Call) and ast.unparse(d.func) == decorator)
    return {k.arg: ast.unparse(k.value) for k in call.keywords}


# ---------------------------------------------------------------- the app as Modal sees it


def test_import_has_no_side_effects(tmp_path):
    code = "import modal_triton, sys; assert 'torch' not in sys.modules and 'tensorrt' not in sys.modules"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, env=env, timeout=60)
    assert list(tmp_path.iterdir()) == []  # nothing written to cwd or HOME


def test_serving_class_resources():
    spec = _spec(mt.Sam3Triton)
    assert spec.gpus == "H200" == mt.GPU
    assert spec.image is _raw(mt.serving_image)
    assert list(spec.volumes) == [mt.VOLUME_ROOT] and spec.volumes[mt.VOLUME_ROOT] is _raw(mt.volume)
    assert spec.secrets == [_raw(mt.api_secret)]
    assert (spec.cpu, spec.memory) == (mt.SERVE_CPU, mt.SERVE_MEMORY_MIB)


def test_build_and_verify_functions_resources():
    for function, image in ((mt.build, mt.export_image), (mt.gpu_check, mt.gpu_check_image)):
        spec = _spec(function)
        assert spec.gpus == mt.GPU and spec.image is _raw(image)
        assert spec.volumes[mt.VOLUME_ROOT] is _raw(mt.volume)
    assert _spec(mt.build).secrets == [_raw(mt.hf_secret)]  # the build never sees the API key
    assert _spec(mt.gpu_check).secrets == []
    probe = _spec(mt.torch_probe)  # needs only torch: no Volume, no secret
    assert probe.gpus == mt.GPU and probe.image is _raw(mt.gpu_check_image) and probe.secrets == []


def test_build_app_needs_neither_the_api_key_nor_the_serving_image():
    """`modal run` creates every function/class of the runnable's App and loads each one's secrets
    (Secret.from_name → SecretGetOrCreate, which fails for a missing secret) and images
    (modal/runner.py _create_all_objects). So ::build/::verify live in their own App."""

    def created_by_modal_run(app) -> dict:  # what runner._create_all_objects indexes
        return {**app._local_state.functions, **app._local_state.classes}

    build_objects = created_by_modal_run(mt.build_app)
    assert set(build_objects) == {"build", "gpu_check", "torch_probe"}
    for function in build_objects.values():
        assert _raw(mt.api_secret) not in function._spec_.secrets
        assert function._spec_.image is not _raw(mt.serving_image)
    assert set(created_by_modal_run(mt.app)) == {"Sam3Triton", "Sam3Triton.*"}
    assert mt.verify.app is mt.build_app and mt.probe.app is mt.build_app and mt.smoke.app is mt.app
    assert {name for name, obj in vars(mt).items() if isinstance(obj, modal.App)} == {"app", "build_app"}


def test_serving_class_decorators_use_the_constants():
    cls_kwargs = _decorator_keywords("Sam3Triton", "app.cls")
    assert {
        k: cls_kwargs[k]
        for k in (
            "gpu",
            "timeout",
            "startup_timeout",
            "min_containers",
            "max_containers",
            "buffer_containers",
            "scaledown_window",
            "secrets",
        )
    } == {
        "gpu": "GPU",
        "timeout": "REQUEST_TIMEOUT_S",
        "startup_timeout": "STARTUP_TIMEOUT_S",
        "min_containers": "MIN_CONTAINERS",
        "max_containers": "MAX_CONTAINERS",
        "buffer_containers": "BUFFER_CONTAINERS",
        "scaledown_window": "SCALEDOWN_WINDOW_S",
        "secrets": "[api_secret]",
    }
    assert _decorator_keywords("Sam3Triton", "modal.concurrent") == {
        "max_inputs": "MAX_INPUTS",
        "target_inputs": "TARGET_INPUTS",
    }
    assert _decorator_keywords("build", "build_app.function")["timeout"] == "BUILD_TIMEOUT_S"
    assert _decorator_keywords("gpu_check", "build_app.function")["timeout"] == "VERIFY_TIMEOUT_S"


def test_scaling_and_timeout_constants_are_coherent():
    assert 0 <= mt.MIN_CONTAINERS <= mt.MAX_CONTAINERS and mt.BUFFER_CONTAINERS >= 0
    assert 1 <= mt.TARGET_INPUTS <= mt.MAX_INPUTS
    assert mt.STARTUP_TIMEOUT_S > mt.TRITON_READY_TIMEOUT_S  # readiness wait fits inside @enter's budget
    assert mt.REQUEST_TIMEOUT_S > 30 and mt.SCALEDOWN_WINDOW_S >= 60


def test_web_endpoints():
    partials = {name: _raw(pf) for name, pf in mt.Sam3Triton._get_partial_functions().items()}
    web = {name: pf.params.webhook_config for name, pf in partials.items() if pf.params.webhook_config}
    assert set(web) == {"gateway", "triton_http"}
    assert web["triton_http"].web_server_port == mt.HTTP_PORT == 8000
    assert web["triton_http"].requires_proxy_auth  # Triton has no auth of its own
    assert not web["gateway"].requires_proxy_auth  # the gateway checks the bearer token itself
    assert {"start_triton", "stop_triton", "label", "grpc_tunnel"} <= set(partials)


def test_local_entrypoints():
    for name in ("smoke", "bench", "verify", "probe", "segment_dataset", "tunnel"):
        assert isinstance(getattr(mt, name), modal.app.LocalEntrypoint), name


def test_image_tag_and_tensorrt_version_are_one_pin():
    assert mt.TRITON_IMAGE is trt.TRITON_IMAGE and mt.TENSORRT_VERSION is trt.TENSORRT_VERSION
    registry = [
        n
        for n in ast.walk(ast.parse(SOURCE))
        if isinstance(n, ast.Call) and ast.unparse(n.func) == "modal.Image.from_registry"
    ]
    assert [ast.unparse(n.args[0]) for n in registry] == ["TRITON_IMAGE"]
    assert trt.TENSORRT_PIP in mt.EXPORT_PACKAGES  # engines are built by the TensorRT the image runs
    assert trt.TENSORRT_PIP in mt.GPU_CHECK_PACKAGES and trt.ONNXRUNTIME_GPU_PIP in mt.GPU_CHECK_PACKAGES
    assert not any(p.split("==")[0] == "onnxruntime" for p in mt.GPU_CHECK_PACKAGES)  # one onnxruntime module only
    # torch serves only the GPU post-processing (DLPack tensors); transformers stays export-only
    assert not any(p.split("==")[0].split(">")[0] in ("transformers", "torchvision") for p in mt.SERVING_PACKAGES)


REAL = Dims(image_size=1008, patch=14, hidden=256, queries=200, text_hidden=1024)


def test_triton_command_is_the_shared_builder(tmp_path):
    repo = tmp_path / "repository"
    server = mt.container_triton(repo, REAL)
    command = server.build_command()
    assert command == server_command(
        repo,
        binary="/opt/tritonserver/bin/tritonserver",
        http_port=8000,
        grpc_port=8001,
        metrics_port=8002,
        model_control="explicit",
        log_verbose=0,
        exit_timeout_s=10,
        extra_args=cuda_pool_args(cuda_pool_bytes(REAL)),
        shm_prefix=server.shm_prefix,  # its own shared-memory names, removed if it is killed
    )
    assert command[0] == trt.TRITON_BINARY and f"--model-repository={repo}" in command
    assert not any(
        a.startswith(("--http-address", "--backend-directory")) for a in command
    )  # all interfaces, image backends
    pool = [a for a in command if a.startswith("--cuda-memory-pool-byte-size=")]
    assert len(pool) == 1 and int(pool[0].split(":")[1]) > 85 * 2**20  # one fp32 fpn_0 at 1008 px is 85 MB
    small = mt.container_triton(repo, TINY).build_command()
    assert small != command  # sized from the model's dims, not a constant


def test_image_recipe_installs_setuptools_beside_the_distro_one_first():
    """torch needs setuptools ≥ 77; pip cannot uninstall the Triton image's distro setuptools 68."""
    for image, packages in ((mt.serving_image, mt.SERVING_PACKAGES), (mt.gpu_check_image, mt.GPU_CHECK_PACKAGES)):
        commands = image_commands(image)
        assert commands[0] == f"FROM {trt.TRITON_IMAGE}"
        pip = [c for c in commands if "pip install" in c and "python3-pip" not in c]
        assert pip[0] == f"RUN python -m pip install --no-cache-dir --ignore-installed '{trt.SETUPTOOLS_PIP}'"
        assert [c for c in commands if "torch==" in c] == pip[1:]  # torch only after it, in the one package step
        assert all(p in pip[1] for p in packages if "<" not in p and "[" not in p)
        assert "RUN ln -sf /usr/bin/python3 /usr/local/bin/python" in commands
    assert images.pip_steps(["a==1"])[1] == "python -m pip install --no-cache-dir a==1"


def test_verify_runs_gpu_check(tmp_path):
    bench = checks.gpu_check_options("bench", mt.GPU_CHECK_DIR)
    assert (bench.model, bench.work, bench.artifacts, bench.install) == (
        "bench",
        Path("/vol/gpu-check/bench"),
        None,
        False,
    )
    assert type(bench.work) is type(Path())  # a concrete path: the export mkdirs under it
    served = checks.gpu_check_options("served", mt.GPU_CHECK_DIR, tmp_path)
    assert served.artifacts == tmp_path / "artifacts" and served.engines == tmp_path / "engines"
    with pytest.raises(ValueError, match="--model must be one of"):
        checks.gpu_check_options("tiny", mt.GPU_CHECK_DIR)
    assert checks.check_verify_model("served") == "served"  # ::verify checks the name before any container
    with pytest.raises(ValueError, match="needs the served build"):
        checks.gpu_check_options("served", mt.GPU_CHECK_DIR)
    verify_source = ast.unparse(next(n for n in ast.parse(SOURCE).body if getattr(n, "name", None) == "gpu_check"))
    assert "run_gpu_check(" in verify_source  # the same code path as `sam3-triton gpu-check`


def test_export_commands():
    out = Path("/vol/builds/x/artifacts")
    assert builds.export_command("onnx", "tiny", out)[1:] == [
        "-m",
        "export",
        "onnx",
        "--model",
        "tiny",
        "--out",
        str(out),
    ]
    assert builds.export_command("verify", "/snap/abc", out)[3] == "verify"
    with pytest.raises(ValueError):
        builds.export_command("trt", "tiny", out)


def test_api_key_comes_from_the_secret(monkeypatch):
    monkeypatch.delenv(mt.API_KEY_ENV, raising=False)
    with pytest.raises(RuntimeError, match=f"modal secret create {mt.API_SECRET_NAME}"):
        mt.api_key()
    monkeypatch.setenv(mt.API_KEY_ENV, "s3cret")
    assert mt.api_key() == "s3cret"


# ---------------------------------------------------------------- build layout, markers, pointer

KEY = builds.BuildKey(model="facebook/sam3", revision="0123abcd", tensorrt=trt.TENSORRT_VERSION, gpu="NVIDIA H200")


def test_build_key_paths(tmp_path):
    paths = builds.BuildPaths.of(tmp_path, KEY)
    assert (
        paths.root == tmp_path / "builds" / "facebook-sam3" / "0123abcd" / f"trt-{trt.TENSORRT_VERSION}" / "NVIDIA-H200"
    )
    assert paths.engines == paths.root / "engines" / f"trt-{trt.TENSORRT_VERSION}" / "NVIDIA-H200"
    assert builds.pointer_path(tmp_path, KEY.model, KEY.tensorrt, KEY.gpu) == (
        tmp_path / "current" / "facebook-sam3" / f"trt-{trt.TENSORRT_VERSION}" / "NVIDIA-H200.json"
    )


def _complete_build(volume_root: Path, key=KEY) -> builds.BuildPaths:
    """A build directory as _run_build leaves it (fake ONNX artifacts, opaque engine bytes)."""
    paths = builds.BuildPaths.of(volume_root, key)
    make_fake_artifacts(paths.artifacts)
    paths.engines.mkdir(parents=True)
    hashes = {}
    for name in ("vision", "text"):
        (paths.engines / f"{name}.plan").write_bytes(f"engine {name}".encode())
        hashes[name] = sha256(paths.engines / f"{name}.plan")
    paths.repository.mkdir()
    builds.write_json(paths.root / builds.BUILD_DONE, builds.done_marker(key, hashes))
    return paths


def test_build_is_complete_detects_every_stale_part(tmp_path):
    paths = _complete_build(tmp_path)
    assert builds.build_is_complete(paths)
    other = builds.BuildPaths(paths.root, builds.BuildKey(KEY.model, KEY.revision, "10.9.0.34", KEY.gpu))
    assert not builds.build_is_complete(other)  # marker of another TensorRT version
    (paths.engines / "text.plan").write_bytes(b"rebuilt elsewhere")
    assert not builds.build_is_complete(paths)  # engine differs from the marker


def test_build_is_complete_checks_artifact_hashes(tmp_path):
    paths = _complete_build(tmp_path)
    with open(paths.artifacts / "text.onnx", "ab") as f:
        f.write(b"\0")
    assert not builds.build_is_complete(paths)


def test_locate_build_serves_only_the_matching_build(tmp_path):
    with pytest.raises(builds.BuildMissingError, match="modal run modal_triton.py::build"):
        builds.locate_build(tmp_path, KEY.model, KEY.tensorrt, KEY.gpu)
    paths = _complete_build(tmp_path)
    pointer = builds.point_current(tmp_path, paths)
    assert json.loads(pointer.read_text())["directory"] == str(paths.root.relative_to(tmp_path))
    assert builds.locate_build(tmp_path, KEY.model, KEY.tensorrt, KEY.gpu) == paths
    with pytest.raises(builds.BuildMissingError, match="no build"):
        builds.locate_build(tmp_path, KEY.model, KEY.tensorrt, "NVIDIA A100-SXM4-80GB")
    (paths.root / builds.BUILD_DONE).unlink()
    with pytest.raises(builds.BuildMissingError, match="unfinished"):
        builds.locate_build(tmp_path, KEY.model, KEY.tensorrt, KEY.gpu)


def test_build_report_and_format():
    rows = [
        trt.parity_row({"batch": 1}, "fpn_0", trt.parity_metrics(np.ones(4), np.ones(4)), trt.PARITY_TOLERANCE["fp16"])
    ]
    records = {
        "vision": {
            "built_precision": "fp16",
            "precision": "fp16",
            "build_seconds": 1.0,
            "fp32_layers": 3,
            "latency": trt.latency_summary([0.01, 0.02]),
            "parity": rows,
        }
    }
    onnx = {
        "model": "m",
        "all_ok": True,
        "checks": [{"check": "vision batch=1", "output": "fpn_0", "max_abs": 2e-6, "ok": True}],
    }
    report = builds.build_report(builds.BuildPaths(Path("/vol/x"), KEY), records, onnx)
    text = checks.format_report(json.loads(json.dumps(report)))
    assert "vision   fp16  ok" in text and "p50 15.00 ms" in text and "1 checks, 0 failing" in text
    assert checks.report_ok(report)
    report["engines"]["vision"]["parity"][0]["ok"] = False
    assert not checks.report_ok(report) and "FAIL" in checks.format_report(report)


# ---------------------------------------------------------------- labeling and COCO


def _masks(height=40, width=60) -> list[np.ndarray]:
    a = np.zeros((height, width), np.uint8)
    a[5:20, 10:30] = 1
    b = np.zeros((height, width), np.uint8)
    b[22:38, 35:58] = 1
    return [a, b]


def _segmentation(masks, labels, scores, concepts):
    """A client Segmentation (client.results) built from `sam3`-shaped outputs for these masks."""
    rles = [mask_utils.encode(np.asfortranarray(m))["counts"] for m in masks]
    boxes = [
        [float(x), float(y), float(x + w), float(y + h)]
        for x, y, w, h in (mask_utils.toBbox(mask_utils.encode(np.asfortranarray(m))) for m in masks)
    ]
    hw = masks[0].shape if masks else (40, 60)
    outputs = {
        "masks_rle": np.array(rles, dtype=object),
        "boxes": np.array(boxes, np.float32).reshape(-1, 4),
        "scores": np.array(scores, np.float32),
        "labels": np.array(labels, np.int32),
        "image_shape": np.array(hw, np.int32),
        "masks": np.zeros((0,) + hw, bool),
        "iou_scores": np.zeros((len(masks), 0), np.float32),
        "stability_scores": np.zeros(len(masks), np.float32),
    }
    return segmentation_from_outputs(outputs, concepts, "text")


def test_concepts_are_cleaned_for_the_client():
    assert labels.clean_concepts(["person", " red car "]) == ["person", "red car"]
    for bad in ([], ["dog", " "], [3]):
        with pytest.raises(ValueError, match="concepts"):
            labels.clean_concepts(bad)


def test_coco_dataset_loads_and_scores_perfectly(tmp_path):
    masks = _masks()
    concepts = ["person", "car"]
    records = [
        labels.record_from_segmentation("b/img2.jpg", _segmentation(masks, [0, 1], [0.9, 0.8], concepts)),
        labels.record_from_segmentation("a/img1.jpg", _segmentation(masks[:1], [1], [0.7], concepts)),
        labels.record_from_segmentation("c/empty.jpg", _segmentation([], [], [], concepts)),
    ]
    path = tmp_path / "coco.json"
    builds.write_json(path, labels.coco_dataset(records, concepts, mt.MODEL_ID))
    coco = COCO(str(path))
    assert [img["file_name"] for img in coco.loadImgs(coco.getImgIds())] == ["a/img1.jpg", "b/img2.jpg", "c/empty.jpg"]
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == concepts
    img2 = coco.getImgIds()[1]
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[img2]))
    assert [a["category_id"] for a in anns] == [1, 2]
    for ann, mask in zip(anns, masks):
        assert np.array_equal(coco.annToMask(ann), mask)
        assert ann["area"] == mask.sum()
        x, y, w, h = ann["bbox"]
        ys, xs = np.nonzero(mask)
        assert (x, y, x + w, y + h) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    evaluator = COCOeval(coco, coco.loadRes(coco.dataset["annotations"]), "segm")
    evaluator.evaluate(), evaluator.accumulate(), evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(1.0)  # the labels scored against themselves: AP 1


def test_coco_dataset_rejects_inconsistent_records():
    concepts = ["person"]
    record = labels.record_from_segmentation("x.jpg", _segmentation(_masks()[:1], [3], [0.9], concepts))
    with pytest.raises(ValueError, match="concept index 3"):
        labels.coco_dataset([record], concepts, mt.MODEL_ID)
    other = labels.record_from_segmentation("y.jpg", _segmentation(_masks()[:1], [0], [0.9], ["dog"]))
    with pytest.raises(ValueError, match="other concepts"):
        labels.coco_dataset([other], concepts, mt.MODEL_ID)


def test_resume_skips_finished_images(tmp_path):
    folder = tmp_path / "images"
    (folder / "a").mkdir(parents=True)
    for name in ("a/b.jpg", "a-b.jpg", "c.PNG"):
        (folder / name).write_bytes(b"img")
    (folder / "notes.txt").write_text("not an image")
    files = labels.list_images(folder)
    assert [n for n, _ in files] == ["a-b.jpg", "a/b.jpg", "c.PNG"]
    shards = tmp_path / "shards"
    assert labels.shard_path(shards, "a/b.jpg") != labels.shard_path(shards, "a-b.jpg")
    concepts = ["person"]
    assert labels.pending_images(files, shards, concepts) == files
    builds.write_json(labels.shard_path(shards, "a/b.jpg"), {"file_name": "a/b.jpg", "concepts": concepts})
    assert [n for n, _ in labels.pending_images(files, shards, concepts)] == ["a-b.jpg", "c.PNG"]
    assert len(labels.pending_images(files, shards, ["dog"])) == 3  # other concepts: labeled again
    with pytest.raises(ValueError):
        labels.list_images(tmp_path / "missing")


def test_parse_concepts():
    assert labels.parse_concepts(" person, red car ,,") == ["person", "red car"]
    with pytest.raises(ValueError):
        labels.parse_concepts(" , ")


# ---------------------------------------------------------------- smoke and bench helpers


def test_smoke_requests_follow_the_seed_contract():
    image = base64.b64encode(b"jpeg").decode()
    requests = checks.smoke_requests(image, 640, 480, "person")
    assert set(requests) == {"text", "point", "box", "auto"}
    assert all(r["image"] == image and r["mode"] == mode for mode, r in requests.items())
    assert requests["text"]["text"] == "person"
    assert requests["point"]["point_coords"] == [[320, 240]] and requests["point"]["point_labels"] == [1]
    x0, y0, x1, y1 = requests["box"]["box_coords"]
    assert 0 <= x0 < x1 <= 640 and 0 <= y0 < y1 <= 480


def test_summarize_response_checks_the_contract():
    text = {"masks": [], "boxes": [], "scores": [], "count": 0, "image_shape": [480, 640]}
    assert checks.summarize_response("text", text, 480, 640) == "text: 0 masks"
    point = {"mask": [[True]], "score": 0.91, "all_scores": [0.91, 0.5, 0.2], "image_shape": [480, 640]}
    assert checks.summarize_response("point", point, 480, 640).startswith("point: score 0.910, 3 candidates")
    with pytest.raises(ValueError, match=r"lacks \['count'\]"):
        checks.summarize_response("auto", {"masks": [], "image_shape": [480, 640]}, 480, 640)
    with pytest.raises(ValueError, match="image_shape"):
        checks.summarize_response("text", {**text, "image_shape": [640, 480]}, 480, 640)


def test_bench_command_is_one_the_benchmark_accepts():
    command = checks.bench_command("r7.modal.host:443", "--concurrency 8 --modes 'text' --no-reference")
    assert command[1:3] == ["-m", "bench"]
    args = parse_args(command[3:])  # the benchmark's own parser: an unknown flag would exit here
    assert args.grpc_url == "grpcs://r7.modal.host:443" and args.protocols == ["grpc"]
    assert args.concurrency == [8] and args.modes == ["text"] and args.no_reference
