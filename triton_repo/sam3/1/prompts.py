"""Point and box prompts of a batch of requests, for the tracker's prompt head (sam3_prompt).

``plan`` turns one point/box request into its objects (validated, in the model frame).
``grouped_calls`` starts the plans of a whole batch: requests on the same image whose objects have
the same number of points share ONE sam3_prompt call, their objects stacked on the objects axis
(chunks of at most ``chunk`` objects); each request then gets the rows of its own objects. One
call instead of one per click saves the copy of the image embeddings into the prompt model
each time (the Python backend copies BLS inputs), which is what clicks on a cached image cost.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
import preprocess as pre
from amg import batch_slices

POINT_LABEL, BOX_LABELS = 1, (2, 3)  # SAM's labels: 1 foreground click, 2/3 the corners of a box


@dataclass
class PromptPlan:
    """The objects of one request: coords float32 [P, K, 2] px in the model frame, labels int64 [P, K]."""

    coords: np.ndarray
    labels: np.ndarray


def plan(req, image_hw, size: int) -> PromptPlan:
    """Point mode: one object of all clicks. Box mode: one object per box, any clicks joining every box
    (before its corners). Raises InputError for coordinates outside the image, NaN or bad labels."""
    if req.mode == "point":
        points, labels = pre.validate_points(req.points, req.point_labels, image_hw)
        return PromptPlan(pre.scale_points(points, image_hw, size)[None], labels[None].astype(np.int64))
    boxes = pre.validate_boxes(req.boxes, image_hw, "boxes")
    coords = pre.scale_points(boxes.reshape(-1, 2, 2), image_hw, size)
    labels = np.tile(np.array(BOX_LABELS, np.int64), (len(boxes), 1))
    if req.points is not None:
        points, point_labels = pre.validate_points(req.points, req.point_labels, image_hw)
        clicks = np.repeat(pre.scale_points(points, image_hw, size)[None], len(boxes), 0)
        coords = np.concatenate([clicks, coords], 1)
        labels = np.concatenate([np.repeat(point_labels[None], len(boxes), 0), labels], 1)
    return PromptPlan(coords, labels)


def grouped_calls(run, plans: dict, chunk: int, measure=None) -> dict:
    """{request index: an awaitable of its prompt-call outputs (a list of output dicts holding its objects, in
    order), which raises its call's exception}. Each group's calls start now, as one task; a request's awaitable is
    done when its own group's are, so its post-processing need not wait for the other groups of the batch.

    plans: {request index: (image key, PromptPlan)}; run(image key, coords, labels) → awaitable
    outputs {pred_masks [P,3,m,m], iou_scores [P,3], ...} of one sam3_prompt call. ``measure``: optional
    ``(member indices, awaitable) → awaitable`` wrapped around each group's calls (the pipeline's timings).
    """
    groups: dict[tuple, list[int]] = {}
    for i, (key, p) in plans.items():
        groups.setdefault((key, p.coords.shape[1]), []).append(i)
    awaitables = {}
    for (key, _), members in groups.items():
        calls = _group(run, key, members, plans, chunk)
        task = asyncio.ensure_future(calls if measure is None else measure(members, calls))
        awaitables |= {i: _member(task, i) for i in members}
    return awaitables


async def _member(task: asyncio.Task, i: int) -> list[dict]:
    """Request ``i``'s part of its group's ``task`` (its call's exception raised); shielded, so one request
    cancelled alone (its client left) leaves the calls the others of its group wait for running."""
    outputs = (await asyncio.shield(task))[i]
    if isinstance(outputs, BaseException):
        raise outputs
    return outputs


async def _group(run, key, members: list[int], plans: dict, chunk: int) -> dict:
    coords = np.concatenate([plans[i][1].coords for i in members])
    labels = np.concatenate([plans[i][1].labels for i in members])
    slices = batch_slices(len(coords), chunk)
    try:
        outs = await asyncio.gather(*(run(key, coords[sl], labels[sl]) for sl in slices))
    except Exception as err:  # noqa: BLE001 - becomes the result of every request of the group
        return dict.fromkeys(members, err)
    ends = np.cumsum([len(plans[i][1].coords) for i in members])
    return {i: _rows(outs, slices, end - len(plans[i][1].coords), end) for i, end in zip(members, ends)}


def _rows(outs: list[dict], slices: list[slice], first: int, stop: int) -> list[dict]:
    """The rows first..stop-1 of the stacked objects, as a list of output dicts (one per chunk touched)."""
    rows = []
    for out, sl in zip(outs, slices):
        lo, hi = max(first, sl.start), min(stop, sl.stop)
        if lo < hi:
            rows.append({name: value[lo - sl.start : hi - sl.start] for name, value in out.items()})
    return rows
