"""Export of the tiny model: graphs follow the spec, parity holds and can fail, fixes are exact.

The session fixture ``tiny_artifacts`` ran ``export all --model tiny`` (export + verify).
"""

from __future__ import annotations

import json
import shutil

import onnx
import pytest
import torch
from transformers.models.sam3.modeling_sam3 import rotate_pairwise

from export.__main__ import main as export_main
from export.checkpoint import CheckpointError, load_models
from export.manifest import ManifestError, load_manifest
from export.parity import ParityError, Tolerance, check_component, ort_session, raise_on_failures
from export.patches import export_patches, rois_from_boxes, rotate_pairwise_matmul
from export.wrappers import build_wrappers
from sam3_spec import COMPONENTS


def test_artifacts_hold_graphs_tokenizer_manifest_and_report(tiny_artifacts):
    manifest = load_manifest(tiny_artifacts, check_hashes=True)
    assert set(manifest.components) == set(COMPONENTS)
    assert manifest.dims.image_size == 224 and manifest.versions["transformers"].startswith("5.")
    report = json.loads((tiny_artifacts / "parity_report.json").read_text())
    checks = {row["check"] for row in report["checks"]}
    assert report["all_ok"] and all(row["ok"] for row in report["checks"])
    for name, spec in manifest.specs().items():
        assert sum(c.startswith(name + " ") for c in checks) == len(spec.parity_sizes) >= 2
    assert any(c.startswith("chain Sam3Model") for c in checks) and any(
        c.startswith("chain Sam3Tracker") for c in checks
    )


def test_onnx_inputs_follow_the_spec(tiny_artifacts):
    """Dynamic axes of the spec are symbolic in the graph; static ones are fixed numbers."""
    for name, spec in load_manifest(tiny_artifacts).specs().items():
        graph = onnx.load(str(tiny_artifacts / spec.onnx_file), load_external_data=False).graph
        inputs = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
        assert list(inputs) == [t.name for t in spec.inputs]
        for t in spec.inputs:
            expected = [d if isinstance(d, int) else None for d in t.shape]
            got = [None if isinstance(d, str) else d for d in inputs[t.name]]
            assert got == expected, (name, t.name, inputs[t.name])


def test_parity_check_fails_loudly_when_a_weight_changes(tiny_artifacts, tiny_checkpoint):
    detector, tracker = load_models(tiny_checkpoint)
    wrappers = build_wrappers(detector, tracker)
    spec = load_manifest(tiny_artifacts).specs()["text"]
    with torch.no_grad():
        detector.text_projection.bias.add_(0.05)
    diffs = check_component(wrappers["text"], spec, ort_session(tiny_artifacts / "text.onnx"), 224, Tolerance())
    with pytest.raises(ParityError) as info:
        raise_on_failures(diffs)
    assert "text_features" in str(info.value) and len(info.value.diffs) == len(spec.parity_sizes)


def test_rois_from_boxes_indexes_every_box():
    boxes = torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 3, 4)
    rois = rois_from_boxes(boxes)
    assert rois.shape == (6, 5)
    assert rois[:, 0].tolist() == [0, 0, 0, 1, 1, 1] and torch.equal(rois[:, 1:], boxes.view(6, 4))


def test_rope_rotation_as_matmul_equals_transformers_bit_for_bit():
    x = torch.randn(2, 3, 7, 4, 64) * 100
    assert torch.equal(rotate_pairwise_matmul(x), rotate_pairwise(x))


@pytest.mark.parametrize("batch", [1, 3])
def test_export_patches_keep_eager_outputs_identical(tiny_models, batch):
    detector = tiny_models[0]
    torch.manual_seed(batch)
    pixels = torch.rand(batch, 3, 224, 224) * 2 - 1
    ids = torch.full((batch, 32), 49407)
    ids[:, :3] = torch.tensor([49406, 320, 49407])
    mask = (torch.arange(32) < 3).long().expand(batch, 32)
    kwargs = dict(
        pixel_values=pixels,
        input_ids=ids,
        attention_mask=mask,
        input_boxes=torch.rand(batch, 2, 4) * 0.4 + 0.2,
        input_boxes_labels=torch.ones(batch, 2, dtype=torch.long),
    )
    with torch.no_grad():
        plain = detector(**kwargs)
        with export_patches(16):
            patched = detector(**kwargs)
    for name in ("pred_logits", "pred_boxes", "pred_masks", "presence_logits"):
        assert torch.allclose(getattr(plain, name), getattr(patched, name), atol=1e-6), name


def test_manifest_detects_changed_and_missing_files(tiny_artifacts, tmp_path):
    copy = tmp_path / "art"
    shutil.copytree(tiny_artifacts, copy, ignore=shutil.ignore_patterns("tiny-checkpoint"))
    with open(copy / "prompt.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ManifestError, match="prompt.onnx sha256"):
        load_manifest(copy, check_hashes=True)
    (copy / "text.onnx").unlink()
    with pytest.raises(ManifestError, match="text.onnx missing"):
        load_manifest(copy)


def test_checkpoint_with_a_missing_tensor_is_refused(tiny_checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file  # noqa: PLC0415 (optional: export extra)

    bad = tmp_path / "bad"
    shutil.copytree(tiny_checkpoint, bad)
    state = load_file(str(bad / "model.safetensors"))
    dropped = next(k for k in state if "tracker_model.mask_decoder" in k)
    del state[dropped]
    save_file(state, str(bad / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="missing_keys"):
        load_models(bad)


def test_cli_errors_are_clear(tmp_path, capsys):
    assert export_main(["onnx", "--model", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert export_main(["verify", "--out", str(tmp_path / "empty")]) == 2
    assert "manifest.json not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        export_main(["onnx", "--model", "tiny", "--out", str(tmp_path), "--components", "vision,lidar"])
    assert "lidar" in capsys.readouterr().err


def test_trt_without_gpu_stops_at_once_with_a_clear_message(tiny_artifacts, capsys):
    assert export_main(["trt", "--out", str(tiny_artifacts)]) == 2
    err = capsys.readouterr().err.lower()
    assert "gpu" in err


def test_artifacts_of_an_older_contract_are_named_and_exported_again(tiny_artifacts, tmp_path):
    """A manifest whose recorded outputs differ from sam3_spec.py (here: the prompt head's object score,
    exported until it was dropped) is refused with the difference, so `serve` exports the model again."""
    stale = tmp_path / "artifacts"
    shutil.copytree(tiny_artifacts, stale)
    manifest = json.loads((stale / "manifest.json").read_text())
    outputs = manifest["tensors"]["prompt"]["outputs"]
    outputs.append({"name": "object_score_logits", "dtype": "FP32", "shape": ["objects", 1]})
    (stale / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=r"prompt outputs were exported as \[.*'object_score_logits'\]"):
        load_manifest(stale)
    outputs.pop()
    outputs[0] |= {"dtype": "FP16", "shape": ["objects", 3, 7, 7]}  # same names, another dtype and shape
    (stale / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError) as err:
        load_manifest(stale)
    want = f"prompt outputs {outputs[0]['name']} was exported as FP16 ['objects', 3, 7, 7], the contract now has FP32"
    assert want in str(err.value) and "inputs" not in str(err.value)
    load_manifest(tiny_artifacts)  # today's export passes
