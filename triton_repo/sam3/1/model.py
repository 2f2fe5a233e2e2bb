"""`sam3` — the orchestrator: a Triton Python-backend model that serves every SAM3 prompt mode.

Triton's dynamic batcher hands ``execute`` several requests at once (``max_batch_size`` > 0, the
variable-length inputs ragged). They run together in one event loop (pipeline.py): one
``sam3_vision`` call for all uncached images, one ``sam3_text`` call for all uncached concepts,
the head calls of every request overlapped through BLS ``async_exec``, decoding and
post-processing in a thread pool.

``execute`` need not wait for its batch to end. It copies the inputs and hands the batch to the event
loop (a thread of its own, as long-lived as the model). A batch of points and boxes only is waited for
and answered in the list ``execute`` returns, Triton's fastest path. Any other batch returns at once with ``None`` in place of its answers, and each request
is answered through its response sender the moment it is done (Python backend ≥ 24.06 allows this in
the default, non-decoupled mode: exactly one response per request, with the FINAL flag; 24.10 allows
such a list to mix responses and ``None``). Triton allows ``async def execute`` only for decoupled
models, which the plain KServe infer API (HTTP and gRPC, non-streaming) cannot call; this keeps that
API for every mode.

Text and auto requests then run in a lane each (``_lane``): one batch at a time of whatever queued
meanwhile, as Triton's dynamic batcher formed them while ``execute`` waited for every batch. Points and
boxes run at once. So a click is no longer held until the auto or text request batched with it, or
running before it, ends, and text can pass auto. Inside the loop, the thread pool and the in-process
head runners serve by each request's mode too (``MODE_PRIORITY``, priority.py: point and box before
text before auto). At most ``detached_requests`` (a config parameter) requests answered by sender are
unanswered at once; beyond that ``execute`` blocks, so Triton queues them (and its queue policy, where one
is set, refuses).

Each request gets its own response: a bad request an INVALID_ARG error that starts "bad request:", a
failed component an UNAVAILABLE error, a text or auto request whose client left (timed out, disconnected:
checked while it waits in its lane and every 0.2 s while it runs) a CANCELLED error, anything unexpected one
INTERNAL error with a short message and an error id (the traceback goes to the server log only).

Config parameters (written by export/repository.py): tokenizer, dims, target, components, and
sam3_spec.ORCHESTRATOR_PARAMETERS (cache sizes, image size limit, worker threads, detached requests)
with their defaults.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
import traceback
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

BLS_THREADS = 16  # BLS calls in flight at once: async_exec blocks one default-executor thread per call


class TritonPythonModel:
    """Triton entry points: initialize (load + validate), execute (one response per request)."""

    def initialize(self, args):
        here = os.path.dirname(os.path.abspath(__file__))
        if here not in sys.path:
            sys.path.insert(0, here)
        # The modules beside this file resolve only after the sys.path line above; the python backend
        # stub provides triton_python_backend_utils, so no module of this folder imports at the top.
        import cv2  # noqa: PLC0415 (after sys.path setup)
        import preprocess  # noqa: PLC0415 (after sys.path setup)
        import triton_python_backend_utils as pb_utils  # noqa: PLC0415 (only inside the python backend stub)
        from arena import cache_arena, image_layout  # noqa: PLC0415 (after sys.path setup)
        from cache import ByteLRU  # noqa: PLC0415 (after sys.path setup)
        from errors import InputError, RequestCancelled  # noqa: PLC0415 (after sys.path setup)
        from metrics import Sam3Metrics  # noqa: PLC0415 (after sys.path setup)
        from pipeline import Sam3Pipeline  # noqa: PLC0415 (after sys.path setup)
        from priority import MODE_PRIORITY, PriorityPool  # noqa: PLC0415 (after sys.path setup)
        from request import Limits, parse_request  # noqa: PLC0415 (after sys.path setup)
        from stages import BlsStages, LocalStages, StageError  # noqa: PLC0415 (after sys.path setup)
        from text_tokens import TextTokenizer  # noqa: PLC0415 (after sys.path setup)

        from sam3_spec import (  # noqa: PLC0415 (after sys.path setup)
            NP_DTYPES,
            ORCHESTRATOR_PARAMETERS,
            SAM3_INPUTS,
            SAM3_OUTPUTS,
            Dims,
            component_specs,
        )

        cv2.setNumThreads(1)  # the pool parallelizes over masks and requests; OpenCV's own pool only contends
        _one_torch_thread(preprocess.torch)
        self.pb = pb_utils
        self.parse_request, self.input_error, self.stage_error = parse_request, InputError, StageError
        self.cancelled_error = RequestCancelled
        params = ORCHESTRATOR_PARAMETERS | _parameters(json.loads(args["model_config"]))
        dims = Dims(**json.loads(params["dims"]))
        specs = component_specs(dims, tuple(json.loads(params["components"])))
        self.input_names = [t.name for t in SAM3_INPUTS]
        self.output_dtypes = {t.name: NP_DTYPES[t.dtype] for t in SAM3_OUTPUTS}  # names and dtypes: the spec
        tokenizer_path = os.path.join(here, params.get("tokenizer", "tokenizer.json"))
        if not os.path.isfile(tokenizer_path):
            raise pb_utils.TritonModelException(f"sam3: tokenizer file {tokenizer_path} not found")
        self.limits = Limits()
        target = params.get("target", "cpu")
        self.image_cache = ByteLRU(int(float(params["image_cache_mb"]) * 2**20))
        self.text_cache = ByteLRU(int(float(params["text_cache_mb"]) * 2**20))
        # cpu target: the cache's host memory (arena.py); the gpu target's cache keeps device tensors
        layout = image_layout(specs["vision"], NP_DTYPES)
        self.arena = None if target == "gpu" else cache_arena(layout, self.image_cache.capacity)
        self.pool = PriorityPool(max_workers=int(params["worker_threads"]), thread_name_prefix="sam3")
        self.loop = asyncio.new_event_loop()
        self.loop.set_default_executor(ThreadPoolExecutor(max_workers=BLS_THREADS, thread_name_prefix="sam3-bls"))
        outputs = {name: [t.name for t in spec.outputs] for name, spec in specs.items()}
        stages = BlsStages(pb_utils, outputs)
        local = json.loads(params.get("local_components", "{}")) if target != "gpu" else {}
        if local:
            stages = LocalStages(stages, _local_runners(pb_utils, local, here, specs), outputs)
        self.stages = stages
        self.pipeline = Sam3Pipeline(
            stages,
            TextTokenizer.from_file(tokenizer_path),
            dims,
            self.image_cache,
            self.text_cache,
            post=_post_module(target),
            pool=self.pool,
            max_pixels=int(float(params["max_pixels"])),
            vision_batch=specs["vision"].profiles["batch"].max,
            text_batch=specs["text"].profiles["batch"].max,
            max_concepts_per_call=_concepts_per_call(target, specs),
            merge_text_calls=target == "gpu",  # why not on CPU: see merge.py
            arena=self.arena,
            layout=layout,
            by_reference=target != "gpu" and bool(int(params["features_by_reference"])),
        )
        self.metrics = Sam3Metrics(pb_utils)
        self.priority_of = MODE_PRIORITY
        self.gate = threading.Condition()  # guards ``unanswered``
        self.unanswered = 0  # requests of batches execute did not wait for, not yet answered
        self.detached_limit = int(params["detached_requests"])
        self.lane_batch = int(json.loads(args["model_config"]).get("max_batch_size", 0)) or 1
        self.lanes = {level: asyncio.Queue() for level in set(MODE_PRIORITY.values()) if level > 0}
        self.loop_thread = threading.Thread(target=self.loop.run_forever, name="sam3-loop", daemon=True)
        self.loop_thread.start()
        for queue in self.lanes.values():
            asyncio.run_coroutine_threadsafe(self._lane(queue), self.loop)

    def execute(self, requests):
        """Hand the batch to the event loop. A batch of points and boxes only is waited for and answered in the
        returned list (Triton's faster path); any other returns at once (``None`` in the list), and each of its
        requests is answered through its response sender as soon as it is done. Blocks while more than
        ``detached_requests`` such requests are unanswered, so Triton queues (and its policy refuses) beyond."""
        start = time.perf_counter()
        parsed = [self._parse(request) for request in requests]
        interactive = all(isinstance(p, BaseException) or self.priority_of[p.mode] == 0 for p in parsed)
        batch = _Batch([request.get_response_sender() for request in requests], counted=not interactive)
        if batch.counted:
            self._reserve(len(requests))
        served = asyncio.run_coroutine_threadsafe(self._serve(parsed, batch, start), self.loop)
        if interactive:
            served.result()
        return batch.detach()

    def _reserve(self, count: int) -> None:
        """Wait for room for ``count`` more detached requests, and take it."""
        with self.gate:
            self.gate.wait_for(lambda: self.unanswered == 0 or self.unanswered + count <= self.detached_limit)
            self.unanswered += count

    def _answered(self, batch: _Batch) -> None:
        """One request of ``batch`` is answered: a counted batch's request frees its place."""
        if batch.counted:
            with self.gate:
                self.unanswered -= 1
                self.gate.notify_all()

    async def _serve(self, parsed: list, batch: _Batch, start: float) -> None:
        """Answer every request of one batch (``parsed``: Sam3Request or its parse error). Points and boxes run
        at once; text and auto requests join their lane (``_lane``). Returns when the points and boxes are."""
        groups: dict[int, list] = {}
        for i, p in enumerate(parsed):
            if isinstance(p, BaseException):
                await self._answer(batch, i, self._error(p))
            else:
                groups.setdefault(self.priority_of[p.mode], []).append(_Item(batch, i, p, start))
        for level, items in groups.items():
            if level > 0:
                self.lanes[level].put_nowait(items)
        if 0 in groups:
            await self._run(groups[0])

    async def _lane(self, queue: asyncio.Queue) -> None:
        """One lane (text, or auto): one batch at a time, of whatever queued meanwhile (up to ``lane_batch``
        requests), as Triton's dynamic batcher did while ``execute`` waited for every batch."""
        while True:
            items = await queue.get()
            while not queue.empty() and len(items) < self.lane_batch:
                items = items + queue.get_nowait()
            try:
                await self._run(await self._live(items), watch=True)
            except Exception:  # noqa: BLE001 - _run answers its requests; the lane must outlive anything else
                print(f"sam3: lane error:\n{traceback.format_exc()}", file=sys.stderr, flush=True)

    async def _live(self, items: list) -> list:
        """``items`` whose clients still wait; a request cancelled while it queued in its lane (its client left or
        timed out: Triton would have dropped it from its own queue) is answered CANCELLED and not run."""
        cancelled = await self.loop.run_in_executor(None, lambda: [item.sender.is_cancelled() for item in items])
        for item, gone in zip(items, cancelled):
            if gone:
                error = self.cancelled_error("the request was cancelled while it waited (its client left or timed out)")
                await self._answer(item.batch, item.index, self._error(error))
        return [item for item, gone in zip(items, cancelled) if not gone]

    async def _run(self, items: list, watch: bool = False) -> None:
        """Run ``items`` (``_Item``) as one pipeline batch and answer each as it is done; each answered one's
        ``Timings.wall`` covers its execute's start to its response handed over. ``watch`` (a lane's batch): a
        request whose client leaves while it runs stops (the pipeline polls its sender), answered CANCELLED."""
        answered, left = [], set(range(len(items)))  # (mode, Timings) answered with a result; unanswered

        async def done(k, result, timings):
            item = items[k]
            left.discard(k)
            await self._answer(item.batch, item.index, self._respond(item.req, result, timings, answered))
            timings.wall = time.perf_counter() - item.start

        try:
            if items:
                cancelled = [item.sender.is_cancelled for item in items] if watch else None
                await self.pipeline.run_batch([item.req for item in items], on_result=done, cancelled=cancelled)
        except BaseException as err:  # noqa: BLE001 - every request still gets its one response
            for k in sorted(left):
                await self._answer(items[k].batch, items[k].index, self._error(err))
        self.metrics.observe(answered, self.image_cache, self.text_cache, self.stages)

    async def _answer(self, batch: _Batch, i: int, response) -> None:
        """Request ``i``'s one response: into the list ``execute`` returns while it waits, else through the
        request's sender (off the loop: a send waits for Triton)."""
        try:
            if not batch.keep(i, response):
                final = self.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
                await self.loop.run_in_executor(None, lambda: batch.senders[i].send(response, flags=final))
        finally:
            self._answered(batch)

    def _parse(self, request):
        try:
            return self.parse_request(_inputs(request, self.input_names), self.limits)
        except Exception as err:  # noqa: BLE001 - becomes this request's error response
            return err

    def _respond(self, req, result, timings, answered: list):
        if isinstance(result, BaseException):
            return self._error(result)
        try:
            response = self.pb.InferenceResponse(
                output_tensors=_outputs(self.pb, result, req.mask_format, self.output_dtypes)
            )
        except Exception as err:  # noqa: BLE001 - becomes this request's error response
            return self._error(err)
        answered.append((req.mode, timings))
        return response

    def _error(self, err: BaseException):
        """The error response of one request: INVALID_ARG for bad input, UNAVAILABLE for a failed
        component, CANCELLED for a request whose client left, INTERNAL with an error id (traceback to the log)
        for anything else."""
        if isinstance(err, self.input_error):
            message, code = f"bad request: {err}", self.pb.TritonError.INVALID_ARG
        elif isinstance(err, self.stage_error):
            message, code = f"{err}; retry shortly", self.pb.TritonError.UNAVAILABLE
        elif isinstance(err, self.cancelled_error):
            message, code = str(err), self.pb.TritonError.CANCELLED
        else:
            error_id = uuid.uuid4().hex[:12]
            trace = "".join(traceback.format_exception(type(err), err, err.__traceback__))
            print(f"sam3: internal error {error_id}:\n{trace}", file=sys.stderr, flush=True)
            message, code = f"internal error (error id {error_id}); see the server log", self.pb.TritonError.INTERNAL
        return self.pb.InferenceResponse(error=self.pb.TritonError(message, code))

    def _drain(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for every request handed to the loop to be answered."""
        with self.gate:
            if not self.gate.wait_for(lambda: self.unanswered == 0, timeout=timeout_s):
                print(f"sam3: {self.unanswered} request(s) unanswered at unload", file=sys.stderr, flush=True)

    def finalize(self):
        self._drain(timeout_s=30.0)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.loop_thread.join(timeout=5.0)
        self.metrics.close()
        if hasattr(self.stages, "close"):
            self.stages.close()
        if self.arena is not None:
            self.arena.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
        if not self.loop.is_running():  # a batch that outlived the drain keeps its loop (and a daemon thread)
            self.loop.close()  # also shuts its default executor down (without waiting)
        self.image_cache = self.text_cache = None


@dataclass
class _Item:
    """One valid request of a batch: where its answer goes, and when its execute started."""

    batch: _Batch
    index: int
    req: object  # request.Sam3Request
    start: float

    @property
    def sender(self):
        """The request's response sender (its ``is_cancelled`` says whether its client left)."""
        return self.batch.senders[self.index]


class _Batch:
    """One execute's answers: kept for its returned list until ``detach``, sent by ``senders`` after that.
    ``counted``: execute does not wait for it, so its requests hold places of ``detached_requests``."""

    def __init__(self, senders: list, counted: bool):
        self.senders, self.slots, self.counted = senders, [None] * len(senders), counted
        self.lock, self.detached = threading.Lock(), False

    def keep(self, i: int, response) -> bool:
        """Keep request ``i``'s response for the returned list; False once ``execute`` has returned."""
        with self.lock:
            if not self.detached:
                self.slots[i] = response
            return not self.detached

    def detach(self) -> list:
        """The list ``execute`` returns: the responses kept so far, None for the rest (they go by sender)."""
        with self.lock:
            self.detached = True
            return list(self.slots)


def _one_torch_thread(torch) -> None:
    """torch (the image resize; GPU post-processing) runs one CPU thread per pool thread, like OpenCV.
    Decoded images are read-only arrays that torch only reads: its warning about them is noise."""
    if torch is None:
        return
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)


def _local_runners(pb_utils, local: dict, here: str, specs: dict) -> dict[str, list]:
    """The runners of the ``local_components`` parameter (local.py); a load error fails the model's load."""
    from pathlib import Path  # noqa: PLC0415 (initialize only)

    from local import LocalLoadError, open_local_runners  # noqa: PLC0415 (after sys.path setup)

    try:
        return open_local_runners(local, Path(here), specs, lambda message: print(message, flush=True))
    except LocalLoadError as err:
        raise pb_utils.TritonModelException(str(err)) from None


def _parameters(config: dict) -> dict[str, str]:
    return {k: v["string_value"] for k, v in config.get("parameters", {}).items()}


def _concepts_per_call(target: str, specs: dict) -> int:
    """Concepts of one request per sam3_concept / sam3_mask call. CPU: one, so every concept runs the
    concept stage's one-prompt static copy, gets the same bits as in a one-concept request, and one
    concept's mask head overlaps the next one's detector (bench model, OpenVINO: four one-prompt calls
    took 346 ms in fp32 and 252 ms in bf16 against 397 and 286 ms for one call of four; in bf16 the call
    of four moved logits by up to 0.008). GPU: as many as both heads' profiles allow (one launch)."""
    if target == "gpu":
        return min(specs[c].profiles["prompts"].max for c in ("concept", "mask"))
    return 1


def _post_module(target: str):
    """Post-processing for the target: numpy/OpenCV on CPU; torch on the GPU (tensors stay on the device)."""
    if target == "gpu":
        import postprocess_torch  # noqa: PLC0415 (GPU target only: imports torch)

        return postprocess_torch
    import postprocess  # noqa: PLC0415 (after initialize's sys.path setup)

    return postprocess


def _inputs(request, names) -> dict:
    """{name: numpy array} of the inputs present in the request, without Triton's batch axis of 1. Copies:
    the request's shared memory is released when ``execute`` returns, before the batch is served."""
    present = {tensor.name(): tensor for tensor in request.inputs()}  # one call: each builds every tensor
    return {name: np.array(present[name].as_numpy()[0]) for name in names if name in present}


def _outputs(pb_utils, result, mask_format: str, dtypes: dict) -> list:
    """SAM3_OUTPUTS tensors of a Sam3Result, each with Triton's batch axis of 1 (masks as RLE or bool, never
    both); ``dtypes``: {output name: numpy dtype} from the spec, in its order (a missing output is a KeyError)."""
    n, (h, w) = len(result.scores), result.image_hw
    rle = result.masks.rle() if mask_format == "rle" else []
    masks = result.masks.dense() if mask_format == "bool" else np.zeros((0, h, w), bool)
    values = {
        "masks_rle": np.array(rle, dtype=object).reshape(len(rle)),
        "masks": masks,
        "boxes": result.boxes.reshape(n, 4),
        "scores": result.scores,
        "labels": result.labels,
        "iou_scores": result.iou_scores,
        "stability_scores": result.stability,
        "image_shape": np.array([h, w]),
    }
    return [pb_utils.Tensor(name, np.asarray(values[name], dtype)[None]) for name, dtype in dtypes.items()]
