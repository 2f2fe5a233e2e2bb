"""Parity of exported graphs: ONNX Runtime vs PyTorch, per component and as whole chains.

Every comparison is collected (never stop at the first); :class:`ParityError` is raised
with a table naming each output outside tolerance and its max abs / rel diff.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from export.inputs import example_inputs
from sam3_spec import ComponentSpec, Dims


@dataclass
class Diff:
    """One compared tensor. rel = max_abs / max(|expected|); ok = max_abs ≤ atol + rtol·max|expected|."""

    check: str
    output: str
    shape: tuple
    max_abs: float
    max_rel: float
    ok: bool


class ParityError(AssertionError):
    """Some outputs differ beyond tolerance; ``diffs`` holds only the failing ones."""

    def __init__(self, diffs: list[Diff]):
        self.diffs = diffs
        rows = "\n".join(
            f"  {d.check:<28} {d.output:<22} max_abs={d.max_abs:.3e} max_rel={d.max_rel:.3e}" for d in diffs
        )
        super().__init__(f"{len(diffs)} output(s) outside tolerance:\n{rows}")


@dataclass(frozen=True)
class Tolerance:
    atol: float = 1e-4
    rtol: float = 1e-4


def diff(check: str, name: str, expected: np.ndarray, actual: np.ndarray, tol: Tolerance) -> Diff:
    """Compare two arrays of the same shape (a shape mismatch is a failed Diff, not a crash)."""
    expected, actual = np.asarray(expected, np.float64), np.asarray(actual, np.float64)
    if expected.shape != actual.shape:
        return Diff(check, name, tuple(actual.shape), float("inf"), float("inf"), False)
    max_abs = float(np.max(np.abs(expected - actual))) if expected.size else 0.0
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    rel = max_abs / scale if scale else max_abs
    return Diff(check, name, tuple(expected.shape), max_abs, rel, max_abs <= tol.atol + tol.rtol * scale)


def ort_session(path):
    """A CPU ONNX Runtime session for ``path``."""
    import onnxruntime as ort  # noqa: PLC0415 (heavy: onnxruntime)

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def check_component(wrapper, spec: ComponentSpec, session, image_size: int, tol: Tolerance) -> list[Diff]:
    """ORT vs the torch wrapper at every entry of ``spec.parity_sizes``."""
    diffs = []
    for sizes in spec.parity_sizes:
        feeds = example_inputs(spec, sizes, image_size, seed=len(diffs) + 1)
        with torch.no_grad():
            expected = as_tuple(wrapper(*(torch.from_numpy(v) for v in feeds.values())))
        actual = session.run([t.name for t in spec.outputs], feeds)
        label = f"{spec.name} " + ",".join(f"{k}={v}" for k, v in sizes.items())
        diffs += [diff(label, t.name, e.numpy(), a, tol) for t, e, a in zip(spec.outputs, expected, actual)]
    return diffs


def as_tuple(outputs) -> tuple:
    """Wrapper outputs as a tuple (single-output wrappers return a bare tensor)."""
    return outputs if isinstance(outputs, (tuple, list)) else (outputs,)


def raise_on_failures(diffs: list[Diff]) -> None:
    failing = [d for d in diffs if not d.ok]
    if failing:
        raise ParityError(failing)


def report(diffs: list[Diff]) -> list[dict]:
    """JSON-ready rows of every comparison."""
    return [asdict(d) for d in diffs]


# ---- chain checks against the UNPATCHED transformers models -------------------------------------


def _pixels(dims: Dims, batch: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, 3, dims.image_size, dims.image_size), dtype=np.uint8)


def _normalized(pixels: np.ndarray) -> torch.Tensor:
    return (torch.from_numpy(pixels).float() / 255.0 - 0.5) / 0.5


def concept_chain(detector, sessions: dict, specs: dict, dims: Dims, tol: Tolerance) -> list[Diff]:
    """vision → text → concept → mask (ORT, masks for every query) equals Sam3Model forward,
    text-only and with exemplar boxes."""
    pixels = _pixels(dims, 1, seed=11)
    fpn = sessions["vision"].run(["fpn_0", "fpn_1", "fpn_2"], {"pixel_values": pixels})
    text_in = example_inputs(specs["text"], {"batch": 2}, dims.image_size, seed=12)
    text = sessions["text"].run(None, text_in)[0]
    boxes = np.array([[[0.45, 0.5, 0.3, 0.4]], [[0.6, 0.4, 0.2, 0.3]]], np.float32)
    labels = np.array([[1], [0]], np.int64)
    diffs = []
    for with_boxes in (False, True):
        feeds = dict(
            fpn_2=fpn[2],
            text_features=text,
            text_mask=text_in["attention_mask"].astype(bool),
            boxes=boxes,
            box_labels=labels,
            box_valid=np.full((2, 1), with_boxes),
        )
        actual = _concept_and_masks(sessions, feeds, fpn)
        kwargs = (
            dict(input_boxes=torch.from_numpy(boxes), input_boxes_labels=torch.from_numpy(labels)) if with_boxes else {}
        )
        with torch.no_grad():
            ref = detector(
                pixel_values=_normalized(pixels).repeat(2, 1, 1, 1),
                input_ids=torch.from_numpy(text_in["input_ids"]),
                attention_mask=torch.from_numpy(text_in["attention_mask"]),
                **kwargs,
            )
        expected = {
            "logits": ref.pred_logits,
            "presence_logits": ref.presence_logits,
            "pred_boxes": ref.pred_boxes,
            "pred_masks": ref.pred_masks,
        }
        label = "chain Sam3Model" + (" +boxes" if with_boxes else " text")
        diffs += [diff(label, name, e.numpy(), actual[name], tol) for name, e in expected.items()]
    return diffs


def _concept_and_masks(sessions: dict, feeds: dict, fpn: list) -> dict:
    """concept outputs + the mask head run on every query: {name: array} incl. pred_masks."""
    names = [o.name for o in sessions["concept"].get_outputs()]
    out = dict(zip(names, sessions["concept"].run(names, feeds)))
    mask_feeds = {"fpn_0": fpn[0], "fpn_1": fpn[1], "memory": out["memory"], "queries": out["queries"]}
    out["pred_masks"] = sessions["mask"].run(None, mask_feeds)[0]
    return out


def prompt_chain(tracker, sessions: dict, specs: dict, dims: Dims, tol: Tolerance) -> list[Diff]:
    """vision → prompt (ORT) equals Sam3TrackerModel forward for points and for a box."""
    pixels = _pixels(dims, 1, seed=21)
    track = sessions["vision"].run(["track_0", "track_1", "track_2"], {"pixel_values": pixels})
    s = dims.image_size
    points = np.array([[[0.3 * s, 0.4 * s], [0.7 * s, 0.6 * s]]], np.float32)
    box = np.array([[0.2 * s, 0.25 * s, 0.8 * s, 0.7 * s]], np.float32)
    cases = {
        "points": (
            points,
            np.array([[1, 0]]),
            dict(input_points=torch.from_numpy(points)[None], input_labels=torch.tensor([[[1, 0]]])),
        ),
        "box": (box.reshape(1, 2, 2), np.array([[2, 3]]), dict(input_boxes=torch.from_numpy(box)[None])),
    }
    m = dims.mask_size
    diffs = []
    for name, (coords, labels, kwargs) in cases.items():
        feeds = dict(
            zip(["track_0", "track_1", "track_2"], track),
            point_coords=coords,
            point_labels=labels.astype(np.int64),
            mask_input=np.zeros((1, 1, m, m), np.float32),
            has_mask_input=np.zeros(1, np.float32),
        )
        actual = sessions["prompt"].run(None, feeds)
        with torch.no_grad():
            ref = tracker(pixel_values=_normalized(pixels), multimask_output=True, **kwargs)
        expected = (ref.pred_masks[0], ref.iou_scores[0])
        diffs += [
            diff(f"chain Sam3Tracker {name}", t.name, e.numpy(), a, tol)
            for t, e, a in zip(specs["prompt"].outputs, expected, actual)
        ]
    return diffs
