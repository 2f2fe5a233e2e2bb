"""The prompt modes of SAM3 for a batch of requests, on top of the component calls (stages.py).

``run_batch(requests)`` serves the requests of one Triton ``execute`` together:

1. Shared inputs. Each image is looked up in the embedding cache (by ``image_id`` or a hash of
   its bytes); the distinct misses are decoded and resized in a thread pool and embedded by ONE
   ``sam3_vision`` call (batch = the missing images). At the same time the concepts missing from
   the text cache are encoded by ONE ``sam3_text`` call.
2. Point and box prompts of the whole batch go to ``sam3_prompt`` together: requests on the same
   image share one call (prompts.py).
3. Per request, as coroutines: the other head calls (``sam3_concept`` then ``sam3_mask`` for the
   kept queries only, ``max_concepts_per_call`` concepts per call, those calls concurrent; auto
   mode's grid) overlap with the other requests' through BLS ``async_exec``;
   post-processing and RLE encoding run in the thread pool. With ``merge_text_calls``, the concept
   and mask calls that text requests on the same image make at the same time become one call each
   (merge.py).

A request's bad input or failure is its own result (an exception); the others go on. Every
request gets :class:`Timings` (seconds per phase) for the metrics.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np
import postprocess as post
import preprocess as pre
import prompts
from amg import AmgConfig, AutomaticMaskGenerator, batch_slices, merge_candidates
from arena import Reserved, SlotArena, slot_bytes
from cache import ByteLRU, value_bytes
from errors import InputError, RequestCancelled
from merge import MergingStages
from postprocess import MaskSet
from priority import MODE_PRIORITY, PRIORITY, PriorityPool
from request import Sam3Request
from stages import StageError

from sam3_spec import (
    AMG_PROMPTS_PER_CALL,
    FEATURES_REF,
    FEATURES_WRITTEN,
    ORCHESTRATOR_PARAMETERS,
    UNCACHED_IMAGE_ID,
)

BOX_ONLY_TEXT = "visual"  # transformers' text for exemplar-box-only prompts
PHASES = ("decode", "compute", "post", "encode")


@dataclass
class Sam3Result:
    """Detections in original-image pixels: D detections of one image."""

    masks: MaskSet  # D masks of image_hw
    boxes: np.ndarray  # float32 [D, 4] x1, y1, x2, y2 px, clipped to the image
    scores: np.ndarray  # float32 [D] in [0, 1]
    labels: np.ndarray  # int32 [D] concept index / prompt object index
    iou_scores: np.ndarray  # float32 [D, C] candidate IoU predictions (C = 0 for text)
    stability: np.ndarray  # float32 [D] (auto mode)
    image_hw: tuple[int, int]


@dataclass
class Features:
    """A cached image embedding: the vision outputs (batch 1), the original size (H, W) and, where the outputs
    lie in an arena slot, its ``ref`` (sam3_spec.FEATURES_REF; None: they go to the heads as tensors)."""

    outputs: dict
    image_hw: tuple[int, int]
    ref: str | None = None


@dataclass
class Timings:
    """Seconds one request spent in each phase (shared calls count for every request in them)."""

    seconds: dict = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    wall: float = 0.0  # from the start of the batch to this request's result

    async def measure(self, phase: str, awaitable):
        return await Timings.shared([self], phase, awaitable)

    @staticmethod
    async def shared(timings: list, phase: str, awaitable):
        """Await ``awaitable`` and add its wall time to ``phase`` of every request in ``timings``."""
        start = time.perf_counter()
        try:
            return await awaitable
        finally:
            for t in timings:
                t.seconds[phase] += time.perf_counter() - start


@dataclass
class _Shared:
    """Step 1's results: {cache key: Features or the exception that prevented them}, {text: (features, mask)}."""

    features: dict
    texts: dict


class Sam3Pipeline:
    """Runs every mode. ``stages``: BlsStages or OrtStages; ``dims``: sam3_spec.Dims; ``post``:
    postprocess (numpy, CPU) or postprocess_torch (GPU); ``pool``: threads for decode and post;
    ``arena``: host memory the image cache keeps embeddings in (arena.py; None: the arrays as returned);
    ``layout``: {vision output: (shape, dtype)} of one image; with both and ``by_reference``, image features
    go between the component models through the arena (sam3_spec.FEATURES_REF), not as BLS tensors."""

    def __init__(
        self,
        stages,
        tokenizer,
        dims,
        image_cache: ByteLRU,
        text_cache: ByteLRU,
        *,
        post=post,
        pool: Executor | None = None,
        max_pixels: int = ORCHESTRATOR_PARAMETERS["max_pixels"],
        vision_batch: int = 8,
        text_batch: int = 16,
        max_concepts_per_call: int = 8,
        max_objects_per_call: int = 64,
        merge_text_calls: bool = True,
        arena: SlotArena | None = None,
        layout: dict | None = None,
        by_reference: bool = False,
    ):
        self.stages = MergingStages(stages, max_rows=max_concepts_per_call) if merge_text_calls else stages
        self.tokenizer, self.dims, self.post = tokenizer, dims, post
        self.image_cache, self.text_cache, self.arena, self.layout = image_cache, text_cache, arena, layout
        self.by_reference = bool(by_reference and arena is not None and layout)
        self.pool = pool or PriorityPool(max_workers=2, thread_name_prefix="sam3")
        self.max_pixels, self.vision_batch, self.text_batch = max_pixels, vision_batch, text_batch
        self.chunk_concepts, self.chunk_objects = max_concepts_per_call, max_objects_per_call

    def run(self, req: Sam3Request) -> Sam3Result:
        """One request, blocking (tests and embedded use); raises its error."""
        result, _ = asyncio.run(self.run_batch([req]))[0]
        if isinstance(result, BaseException):
            raise result
        return result

    async def run_batch(self, reqs: list[Sam3Request], on_result=None, cancelled: list | None = None) -> list[tuple]:
        """[(Sam3Result or the request's exception, Timings)] in request order. ``on_result``: an optional
        ``async (index, result, timings)`` awaited as each request finishes, before the batch does.
        ``cancelled``: optional zero-argument callables, one per request (blocking: run off the loop), polled
        every CANCEL_POLL_S once the batch's shared step is done; a request found cancelled stops its own
        remaining calls and gets ``RequestCancelled`` as its result."""
        start, timings = time.perf_counter(), [Timings() for _ in reqs]
        shared = await self._shared(reqs, timings)
        heads = self._prompt_heads(reqs, shared, timings)
        modes = [self._mode(req, shared, t, heads.get(i)) for i, (req, t) in enumerate(zip(reqs, timings))]
        watch = None
        if cancelled:  # each request a task of its own, which the watch can cancel alone
            modes = [asyncio.ensure_future(mode) for mode in modes]
            watch = asyncio.ensure_future(_cancel_when(cancelled, modes))
        try:
            jobs = [self._timed(job, t, start, i, on_result) for i, (job, t) in enumerate(zip(modes, timings))]
            return list(zip(await asyncio.gather(*jobs), timings))
        finally:
            if watch is not None:
                watch.cancel()

    @staticmethod
    async def _timed(job, t: Timings, start: float, index: int, on_result):
        """The job's result or exception (``RequestCancelled`` where it was cancelled alone), its wall time in
        ``t``, handed to ``on_result`` too."""
        try:
            result = await job
        except asyncio.CancelledError:
            if not isinstance(job, asyncio.Task) or not job.cancelled() or asyncio.current_task().cancelling():
                raise  # the batch itself is cancelled
            result = RequestCancelled("the request was cancelled while it ran (its client left or timed out)")
        except Exception as err:  # noqa: BLE001 - the request's own error, returned as its result
            result = err
        t.wall = time.perf_counter() - start
        if on_result is not None:
            await on_result(index, result, t)
        return result

    async def in_pool(self, fn, *args):
        """``fn(*args)`` in the thread pool."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    # ---- step 1: images and texts of the whole batch ---------------------------------------------

    async def _shared(self, reqs, timings) -> _Shared:
        images, texts = await asyncio.gather(
            self._embed_images(reqs, timings), self._encode_texts(reqs, timings), return_exceptions=True
        )
        if isinstance(texts, BaseException):  # a failed text call fails the text-mode requests only
            texts = {t: texts for r in reqs if r.mode == "text" for t in (r.texts or [BOX_ONLY_TEXT])}
        if isinstance(images, BaseException):
            images = {r.cache_key: images for r in reqs}
        return _Shared(images, texts)

    async def _embed_images(self, reqs, timings) -> dict:
        """{cache key: Features | exception} of every request's image; one vision call for the misses."""
        found, sources = self._lookup(reqs)
        decoded = await asyncio.gather(
            *(timings[i].measure("decode", self.in_pool(self._decode, reqs[i])) for i in sources.values()),
            return_exceptions=True,
        )
        ready = {}
        for key, value in zip(sources, decoded):
            (found if isinstance(value, BaseException) else ready)[key] = value
        users = {key: [t for r, t in zip(reqs, timings) if r.cache_key == key] for key in ready}
        for keys in _chunks_of(list(ready), self.vision_batch):
            found |= await self._vision_call(keys, ready, users)
        return found

    def _lookup(self, reqs) -> tuple[dict, dict]:
        """({key: cached Features or InputError}, {missing key: index of a request holding its bytes})."""
        found, sources = {}, {}
        for i, req in enumerate(reqs):
            key = req.cache_key
            if key in sources or isinstance(found.get(key), Features):
                continue
            cached = None if key in found else self.image_cache.get(key)
            if cached is not None:
                found[key] = cached
            elif req.image:
                found.pop(key, None)
                sources[key] = i
            else:
                found[key] = InputError(
                    f"image_id {req.image_id!r} {UNCACHED_IMAGE_ID} (never sent, or evicted): send the image with it"
                )
        return found, sources

    def _decode(self, req: Sam3Request):
        """(pixels uint8 [1,3,S,S], (H, W)) of the request image (runs in the pool)."""
        image = pre.decode_image(req.image, self.max_pixels)
        return pre.resize_for_model(image, self.dims.image_size), image.shape[:2]

    async def _vision_call(self, keys: list, ready: dict, users: dict) -> dict:
        """One sam3_vision call for ``keys`` (batch = len(keys)); caches and returns their Features."""
        pixels = np.concatenate([ready[k][0] for k in keys])
        waiting = [t for key in keys for t in users[key]]
        try:
            features = await Timings.shared(waiting, "compute", self._embed(pixels, [ready[k][1] for k in keys]))
        except Exception as err:  # noqa: BLE001 - becomes the result of every request needing these images
            return dict.fromkeys(keys, err)
        for key, value in zip(keys, features):
            self.image_cache.put(key, value)
        return dict(zip(keys, features))

    async def _embed(self, pixels: np.ndarray, sizes: list) -> list[Features]:
        """Features of each image of ``pixels`` (uint8 [N,3,S,S]); ``sizes``: their original (H, W). The vision
        model writes them into arena slots where by reference is on and N slots are free."""
        slots = self._reserve(len(sizes))
        if slots:
            refs = np.array([[slot.ref] for slot in slots], dtype=object)
            feeds = {"pixel_values": pixels, FEATURES_REF.name: refs}
            if await self._by_reference(self.stages.arun("vision", feeds, [FEATURES_WRITTEN.name])):
                return [Features(slot.arrays, hw, slot.ref) for slot, hw in zip(slots, sizes)]
            slots = None  # free again for the copies below
        out = await self.stages.arun("vision", {"pixel_values": pixels})
        return [Features(self._kept({n: v[i : i + 1] for n, v in out.items()}), hw) for i, hw in enumerate(sizes)]

    def _reserve(self, count: int) -> list[Reserved] | None:
        """``count`` arena slots for new images (the cache evicts to free them), or None (by reference off,
        or not enough slots free)."""
        if not self.by_reference:
            return None
        self.image_cache.make_room(count * slot_bytes(self.layout))
        slots = []
        for _ in range(count):
            slot = self.arena.reserve(self.layout)
            if slot is None:
                return None
            slots.append(slot)
        return slots or None

    async def _by_reference(self, call) -> dict | None:
        """The outputs of ``call``, a component call with features by reference; None where that component
        cannot use the arena (its ``features_ref`` error: a repository older than by reference, a process
        that cannot map the file). By reference is then off for good, and the caller sends tensors."""
        try:
            return await call
        except StageError as err:
            if FEATURES_REF.name not in str(err):
                raise
            self.by_reference = False
            print(f"sam3: image features go to the heads as tensors from now on: {err}", flush=True)
            return None

    async def _with_features(self, component: str, features: Features, names: tuple, feeds: dict) -> dict:
        """``component``'s outputs for ``feeds`` plus the image features ``names``: by reference where the
        image is in an arena slot and the component runs in another process, else as tensors (in this
        process: views of the arena, no copy)."""
        if features.ref is not None and self.by_reference and not self.stages.in_process(component):
            ref = {FEATURES_REF.name: np.array([features.ref], dtype=object)}
            out = await self._by_reference(self.stages.arun(component, feeds | ref))
            if out is not None:
                return out
        return await self.stages.arun(component, feeds | {n: features.outputs[n] for n in names})

    def _kept(self, arrays: dict) -> dict:
        """One image's vision outputs as the cache keeps them: copied into a free arena slot where there is one
        (the BLS output's shared memory is then released: arena.py), else as they are."""
        if self.arena is None:
            return arrays
        self.image_cache.make_room(value_bytes(arrays))
        return self.arena.pack(arrays) or arrays

    async def _encode_texts(self, reqs, timings) -> dict:
        """{text: (features [32, C], mask bool [32])} of every concept of the text-mode requests."""
        wanted = [t for r in reqs if r.mode == "text" for t in (r.texts or [BOX_ONLY_TEXT])]
        known = {t: self.text_cache.get(t) for t in dict.fromkeys(wanted)}
        missing = [t for t, v in known.items() if v is None]
        users = [
            tm for r, tm in zip(reqs, timings) if r.mode == "text" and set(r.texts or [BOX_ONLY_TEXT]) & set(missing)
        ]
        for part in _chunks_of(missing, self.text_batch):
            ids, mask = self.tokenizer.encode(part)
            out = await Timings.shared(
                users, "compute", self.stages.arun("text", {"input_ids": ids, "attention_mask": mask})
            )
            for i, text in enumerate(part):
                known[text] = (_host(out["text_features"][i]), mask[i].astype(bool))
                self.text_cache.put(text, known[text])
        return known

    # ---- step 2: the point and box prompts of the batch ---------------------------------------------

    def _prompt_heads(self, reqs, shared: _Shared, timings) -> dict:
        """{index of a point/box request: an awaitable of its prompt-head outputs (list of output dicts; it raises
        the call's error), or the error that prevented the call}. The calls start now (prompts.grouped_calls: one group per image and prompt length)."""
        plans, failed = {}, {}
        for i, req in enumerate(reqs):
            features = shared.features.get(req.cache_key) if req.mode in ("point", "box") else None
            if isinstance(features, Features):
                try:
                    plans[i] = (req.cache_key, prompts.plan(req, features.image_hw, self.dims.image_size))
                except InputError as err:
                    failed[i] = err
        if not plans:
            return failed

        def run(key, coords, labels):
            return self._prompt_call(shared.features[key], coords, labels)

        def measure(members, calls):
            return Timings.shared([timings[i] for i in members], "compute", calls)

        return failed | prompts.grouped_calls(run, plans, self.chunk_objects, measure)

    # ---- step 3: one request's mode -------------------------------------------------------------

    async def _mode(self, req: Sam3Request, shared: _Shared, t: Timings, heads) -> Sam3Result:
        """The request's result; ``heads``: an awaitable of its prompt-head outputs (point/box modes), from step 2,
        or the error that prevented them. Runs in the request's own task, whose pool jobs and in-process head
        calls take its mode's priority (priority.py)."""
        PRIORITY.set(MODE_PRIORITY[req.mode])
        features = shared.features[req.cache_key]
        if isinstance(features, BaseException):
            raise features
        if req.mode in ("point", "box"):
            if isinstance(heads, BaseException):
                raise heads
            result = await self._prompt_result(features, await heads, req, t)
        else:
            result = await {"text": self._text, "auto": self._auto}[req.mode](req, features, shared, t)
        if req.mask_format == "rle":
            await t.measure("encode", self.in_pool(result.masks.rle))
        return result

    # text concepts (+ exemplar boxes)

    async def _text(self, req: Sam3Request, features: Features, shared: _Shared, t: Timings) -> Sam3Result:
        texts = req.texts or [BOX_ONLY_TEXT]
        text_features, text_mask = _stack_texts([shared.texts[x] for x in texts])
        boxes, labels, valid = self._exemplars(req, features.image_hw, len(texts))
        feeds = {
            "text_features": text_features,
            "text_mask": text_mask,
            "boxes": boxes,
            "box_labels": labels,
            "box_valid": valid,
        }
        calls = [
            self._concepts({k: v[sl] for k, v in feeds.items()}, features, req, t)
            for sl in batch_slices(len(texts), self.chunk_concepts)
        ]
        return _concept_result([part for parts in await _all(calls) for part in parts], features.image_hw)

    async def _concepts(self, feeds: dict, features: Features, req: Sam3Request, t: Timings) -> list[tuple]:
        """[(scores [D], boxes [D,4] px, MaskSet)] per prompt: detector call, then masks for kept queries."""
        det = await t.measure("compute", self._with_features("concept", features, ("fpn_2",), feeds))
        kept = self.post.select_queries(det["logits"], det["presence_logits"], req.threshold)
        hw = features.image_hw
        masks = [MaskSet.empty(hw) for _ in kept]
        rows, memory, queries = self.post.gather_queries(det["queries"], det["memory"], [k for k, _ in kept])
        if len(rows):
            feeds = {"memory": memory, "queries": queries}
            out = await t.measure("compute", self._with_features("mask", features, ("fpn_0", "fpn_1"), feeds))
            counts = [len(kept[int(r)][0]) for r in rows]
            sets = await t.measure(
                "post", self.in_pool(self.post.concept_masks, out["pred_masks"], counts, hw, req.mask_threshold)
            )
            for r, mask_set in zip(rows, sets):
                masks[int(r)] = mask_set
        return [
            (_host(scores), self.post.scale_boxes(det["pred_boxes"][n], k, hw), masks[n])
            for n, (k, scores) in enumerate(kept)
        ]

    def _exemplars(self, req: Sam3Request, image_hw, n: int):
        """(boxes cxcywh [n,K,4], labels int64 [n,K], valid bool [n,K]); one padding slot if none."""
        if req.boxes is None:
            pad = np.array([[[0.5, 0.5, 0.1, 0.1]]], np.float32)
            return np.repeat(pad, n, 0), np.zeros((n, 1), np.int64), np.zeros((n, 1), bool)
        boxes = pre.validate_boxes(req.boxes, image_hw, "boxes")
        labels = pre.validate_box_labels(req.box_labels, len(boxes))
        cxcywh = pre.boxes_xyxy_to_cxcywh_norm(boxes, image_hw).astype(np.float32)
        return (np.repeat(cxcywh[None], n, 0), np.repeat(labels[None], n, 0), np.ones((n, len(boxes)), bool))

    # points / boxes (tracker head)

    def _prompt_call(self, features: Features, coords: np.ndarray, labels: np.ndarray):
        """The sam3_prompt call (a coroutine) for P objects of one image: coords float32 [P,K,2] in the model
        frame, labels int64 [P,K]."""
        m = self.dims.mask_size
        feeds = {
            "point_coords": coords.astype(np.float32),
            "point_labels": labels.astype(np.int64),
            "mask_input": np.zeros((1, 1, m, m), np.float32),
            "has_mask_input": np.zeros(1, np.float32),
        }
        return self._with_features("prompt", features, TRACKER_FEATURES, feeds)

    async def _prompt_result(self, features: Features, outs: list[dict], req: Sam3Request, t: Timings) -> Sam3Result:
        """Best of the 3 candidate masks per object (prompt-head outputs ``outs``), upsampled and binarized."""
        masks, iou = await t.measure(
            "post",
            self.in_pool(self.post.best_prompt_masks, outs, features.image_hw, post.prob_to_logit(req.mask_threshold)),
        )
        iou = post.clip_scores(iou)  # the IoU head's predictions, as scores in [0, 1]
        return Sam3Result(
            masks,
            masks.boxes_xyxy(),
            iou.max(-1),
            np.arange(len(iou), dtype=np.int32),
            iou,
            np.zeros(len(iou), np.float32),
            features.image_hw,
        )

    # automatic ("segment everything")

    async def _amg_run(self, generator, batches: list, features: Features, t: Timings) -> tuple:
        """Every prompt batch's sam3_prompt call, issued at once; as each returns (in order), its
        candidates are collected in parts of AMG_PART prompts in the thread pool while the later
        calls still run. Returns ([(pred_masks, iou) on the host], merged candidates, or None where
        the generator's small-region cleanup needs its own sequential path)."""
        calls = [
            asyncio.ensure_future(self._prompt_call(features, model_points, labels))
            for _, model_points, labels in batches
        ]
        outputs, jobs = [], []
        try:
            await t.measure("compute", self._amg_collect(generator, batches, calls, outputs, jobs, features))
            found = await t.measure("post", asyncio.gather(*jobs))
        except BaseException:  # a failed call: stop the rest, and leave no task's error unretrieved
            for task in calls + jobs:
                task.cancel()
            await asyncio.gather(*calls, *jobs, return_exceptions=True)
            raise
        return outputs, (merge_candidates(found) if found else None)

    async def _amg_collect(self, generator, batches, calls, outputs: list, jobs: list, features) -> None:
        """Await the calls in order; append each one's outputs, and start its collect jobs in the pool."""
        sequential = generator.config.min_mask_region_area > 0
        for (points, _, _), call in zip(batches, calls):
            out = await call
            masks, iou = _host(out["pred_masks"]), _host(out["iou_scores"])
            outputs.append((masks, iou))
            if not sequential:
                jobs += [
                    asyncio.ensure_future(
                        self.in_pool(
                            generator.collect, [(points[sl], None, None)], [(masks[sl], iou[sl])], features.image_hw
                        )
                    )
                    for sl in batch_slices(len(points), AMG_PART)
                ]

    async def _auto(self, req: Sam3Request, features: Features, shared, t: Timings) -> Sam3Result:
        generator = AutomaticMaskGenerator(
            AmgConfig(
                points_per_side=req.points_per_side,
                points_per_batch=min(req.points_per_batch, AMG_PROMPTS_PER_CALL),
                pred_iou_thresh=req.pred_iou_thresh,
                stability_score_thresh=req.stability_score_thresh,
            )
        )
        batches = generator.prompt_batches(features.image_hw, self.dims.image_size)
        outputs, candidates = await self._amg_run(generator, batches, features, t)
        found = await t.measure(
            "post", self.in_pool(generator.generate_rle, batches, outputs, features.image_hw, candidates)
        )
        n, iou = len(found["iou"]), post.clip_scores(found["iou"])
        return Sam3Result(
            found["masks"],
            post.clip_boxes(found["boxes"], features.image_hw),
            iou,
            np.arange(n, dtype=np.int32),
            iou[:, None],
            found["stability"],
            features.image_hw,
        )


TRACKER_FEATURES = ("track_0", "track_1", "track_2")  # the vision outputs sam3_prompt reads
AMG_PART = 16  # prompts per post-processing job of auto mode: parts run in parallel in the pool
CANCEL_POLL_S = 0.2  # how often run_batch asks whether its requests' clients are still there


async def _all(calls: list) -> list:
    """The results of ``calls`` run concurrently; after every one has ended, the first one's error is raised."""
    return _no_errors(await asyncio.gather(*calls, return_exceptions=True))


async def _cancel_when(cancelled: list, tasks: list) -> None:
    """Cancel each of ``tasks`` whose ``cancelled[i]()`` turns true, polling every CANCEL_POLL_S (the calls in
    one executor job: each may be a round trip to Triton) until every task is done."""
    loop = asyncio.get_running_loop()
    while not all(task.done() for task in tasks):
        await asyncio.sleep(CANCEL_POLL_S)
        running = [i for i, task in enumerate(tasks) if not task.done()]
        gone = await loop.run_in_executor(None, lambda: [i for i in running if cancelled[i]()])
        for i in gone:
            tasks[i].cancel()


def _no_errors(items: list) -> list:
    """``items``; raises the first of them that is an exception."""
    for item in items:
        if isinstance(item, BaseException):
            raise item
    return items


def _host(x) -> np.ndarray:
    """A numpy array of ``x`` (GPU tensors are copied to the host)."""
    return x if isinstance(x, np.ndarray) else x.detach().cpu().numpy()


def _chunks_of(items: list, size: int) -> list[list]:
    return [items[sl] for sl in batch_slices(len(items), size)]


def _stack_texts(items: list) -> tuple[np.ndarray, np.ndarray]:
    """[(features [32,C], mask [32]) or an exception] → (features [N,32,C], mask [N,32]); raises a failure."""
    _no_errors(items)
    return np.stack([f for f, _ in items]), np.stack([m for _, m in items])


def _concept_result(parts: list[tuple], image_hw) -> Sam3Result:
    """Concatenate per-concept (scores, boxes, MaskSet); label = concept index."""
    labels = np.concatenate([np.full(len(s), i, np.int32) for i, (s, _, _) in enumerate(parts)])
    scores = np.concatenate([s for s, _, _ in parts]).astype(np.float32)
    boxes = np.concatenate([b for _, b, _ in parts]).reshape(-1, 4).astype(np.float32)
    masks = MaskSet.concat([m for _, _, m in parts], image_hw)
    return Sam3Result(
        masks,
        boxes,
        scores,
        labels,
        np.zeros((len(scores), 0), np.float32),
        np.zeros(len(scores), np.float32),
        image_hw,
    )
