"""Coalesce the sam3_concept and sam3_mask calls that the requests of one batch make at once.

The requests of one ``execute`` run as coroutines. Those on the same image reach their
sam3_concept call (and later their sam3_mask call) in the same event-loop iteration.
:class:`MergingStages` holds such calls until that iteration ends. It then sends ONE call per
image and input shape, their prompts stacked on the leading (prompts) axis, at most
``max_rows`` prompts per call, and hands every caller its own rows of the outputs.

What that saves: the image inputs go once per call instead of once per request. The Python
backend copies every BLS input; on the bench model fpn_0 + fpn_1 are 13 MB per mask call.
Prompt rows are independent in both graphs (the image features are broadcast to each prompt):
in fp32 a merged caller's scores equal its own call's to 2e-7; in bf16 a batch of n prompts
rounds differently from n single calls (scores moved by up to 0.0024 on the bench model).
A call with one caller is passed through untouched.

The orchestrator merges on the GPU target only. On the CPU the per-prompt compute dominates
and n separate calls overlap better across the cores (one prompt's mask head runs while the next
prompt's detector does): 8 clients sending text requests on one cached image got 30.5 and 28.1
requests/s merged against 34.7 and 31.7 separate (bench model, 2 cores). On a GPU one call of n
prompts replaces n launches and n copies of the image features; that gain is not measured yet.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
from stages import is_torch


@dataclass(frozen=True)
class MergeRule:
    """How the calls of one component stack.

    shared: inputs that must be the SAME object in every merged call (one image's features),
    sent once. padded: (input, axis) of the one input that may differ in length along that axis;
    shorter ones are zero-padded to the longest, and the ``trimmed`` outputs are cut back along the
    same axis to each caller's length. Every other input is concatenated on axis 0, every output
    split on it.
    """

    shared: tuple[str, ...]
    padded: tuple[str, int] | None = None
    trimmed: tuple[str, ...] = ()


RULES = {
    "concept": MergeRule(shared=("fpn_2",)),
    "mask": MergeRule(shared=("fpn_0", "fpn_1"), padded=("queries", 1), trimmed=("pred_masks",)),
}


class MergingStages:
    """Stages (see stages.py) whose ``arun`` merges concurrent calls of the components in ``rules``."""

    def __init__(self, stages, max_rows: int, rules: dict[str, MergeRule] = RULES):
        self.stages, self.max_rows, self.rules = stages, int(max_rows), rules
        self._pending: dict[tuple, list[tuple[dict, asyncio.Future]]] = {}
        self._sending: set[asyncio.Task] = set()

    def run(self, component: str, feeds: dict, outputs: list | None = None) -> dict:
        return self.stages.run(component, feeds, outputs)

    def in_process(self, component: str) -> bool:
        return self.stages.in_process(component)

    async def arun(self, component: str, feeds: dict, outputs: list | None = None) -> dict:
        rule = self.rules.get(component)
        if rule is None or outputs is not None:
            return await self.stages.arun(component, feeds, outputs)
        loop = asyncio.get_running_loop()
        if not self._pending:
            loop.call_soon(self._flush)  # after every coroutine that is ready now has run its step
        future = loop.create_future()
        self._pending.setdefault(_group_key(component, rule, feeds), []).append((feeds, future))
        return await future

    def _flush(self) -> None:
        pending, self._pending = self._pending, {}
        for (component, *_), calls in pending.items():
            for pack in _packs(calls, self.max_rows, self.rules[component]):
                task = asyncio.ensure_future(self._send(component, pack))
                self._sending.add(task)
                task.add_done_callback(self._sending.discard)

    async def _send(self, component: str, pack: list[tuple[dict, asyncio.Future]]) -> None:
        rule = self.rules[component]
        feeds = [f for f, _ in pack]
        try:
            out = await self.stages.arun(component, feeds[0] if len(pack) == 1 else _stacked(feeds, rule))
        except Exception as err:  # noqa: BLE001 - every caller of the merged call gets its error
            for _, future in pack:
                if not future.done():
                    future.set_exception(err)
            return
        for (_, future), part in zip(pack, _split(out, feeds, rule)):
            if not future.done():
                future.set_result(part)


def _group_key(component: str, rule: MergeRule, feeds: dict) -> tuple:
    """Calls merge when their shared inputs are the same objects and their other inputs agree in
    dtype and in shape beyond the prompts axis (and the padded axis)."""
    shapes = tuple(
        (name, str(value.dtype), _shape_without(value, _padded_axis(rule, name)))
        for name, value in feeds.items()
        if name not in rule.shared
    )
    return (component, tuple(id(feeds[name]) for name in rule.shared), shapes)


def _padded_axis(rule: MergeRule, name: str) -> int | None:
    """The axis along which input ``name`` may differ between merged calls (None: it may not)."""
    return rule.padded[1] if rule.padded and rule.padded[0] == name else None


def _shape_without(value, axis: int | None) -> tuple:
    shape = tuple(value.shape[1:])
    return shape if axis is None else shape[: axis - 1] + shape[axis:]


def _packs(calls: list, max_rows: int, rule: MergeRule) -> list[list]:
    """Consecutive callers, at most ``max_rows`` prompts per pack (a bigger caller goes alone)."""
    packs, rows = [[]], 0
    for call in calls:
        n = _prompts(call[0], rule)
        if packs[-1] and rows + n > max_rows:
            packs, rows = packs + [[]], 0
        packs[-1].append(call)
        rows += n
    return packs


def _stacked(feeds: list[dict], rule: MergeRule) -> dict:
    """One call's inputs from several callers' (shared taken once, padded ones padded, all concatenated)."""
    merged = {}
    for name in feeds[0]:
        values = [f[name] for f in feeds]
        if name in rule.shared:
            merged[name] = values[0]
        else:
            axis = _padded_axis(rule, name)
            if axis is not None:
                length = max(v.shape[axis] for v in values)
                values = [_pad(v, axis, length) for v in values]
            merged[name] = _concat(values)
    return merged


def _split(out: dict, feeds: list[dict], rule: MergeRule) -> list[dict]:
    """Each caller's rows of the merged outputs (``trimmed`` ones cut to its padded length)."""
    parts, start = [], 0
    for caller in feeds:
        stop = start + _prompts(caller, rule)
        part = {name: value[start:stop] for name, value in out.items()}
        if rule.padded is not None:
            name, axis = rule.padded
            keep = caller[name].shape[axis]
            part |= {o: part[o][(slice(None),) * axis + (slice(0, keep),)] for o in rule.trimmed}
        parts.append(part)
        start = stop
    return parts


def _prompts(feeds: dict, rule: MergeRule) -> int:
    """The caller's number of prompts: the leading length of its first non-shared input."""
    return int(next(v for n, v in feeds.items() if n not in rule.shared).shape[0])


def _pad(value, axis: int, length: int):
    """``value`` zero-padded at the end of ``axis`` to ``length`` (numpy or torch)."""
    missing = length - value.shape[axis]
    if not missing:
        return value
    if is_torch(value):
        import torch  # noqa: PLC0415 (GPU target only)

        shape = list(value.shape)
        shape[axis] = missing
        return torch.cat([value, value.new_zeros(shape)], dim=axis)
    widths = [(0, 0)] * value.ndim
    widths[axis] = (0, missing)
    return np.pad(value, widths)


def _concat(values: list):
    if is_torch(values[0]):
        import torch  # noqa: PLC0415 (GPU target only)

        return torch.cat(values, dim=0)
    return np.concatenate(values, axis=0)
