"""How the orchestrator calls the four component models.

Two interchangeable back ends with one interface, the coroutine
``await arun(component, feeds, outputs=None) -> {name: array}`` (and its blocking twin ``run``;
``outputs``: the output names to ask for, default all of the component's):

- :class:`BlsStages` — inside Triton: BLS requests to the ``sam3_<component>`` models with
  ``async_exec``, so the pipeline overlaps the calls of several requests (and vision ‖ text).
  GPU outputs stay on the GPU (DLPack → torch) and GPU inputs are passed by DLPack.
- :class:`OrtStages` — the same ONNX graphs in in-process ONNX Runtime sessions (tests,
  embedded use without a server).
- :class:`LocalStages` — some components in this process, the others through another back end
  (the cpu target's heads: ``local_components``, README "Heads in the orchestrator's process").

``in_process(component)`` says whether a component runs in this process: it then takes image features
as arrays (views of the cache's memory), never a ``features_ref``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from priority import PRIORITY, PriorityQueue


class StageError(RuntimeError):
    """A component model failed (a server-side error, not the user's input)."""


class BlsStages:
    """Component calls through Triton BLS. ``outputs``: {component: [output names]}."""

    def __init__(self, pb_utils, outputs: dict[str, list[str]], prefix: str = "sam3_"):
        self.pb = pb_utils
        self.outputs = outputs
        self.prefix = prefix

    def _request(self, component: str, feeds: dict, outputs: list):
        tensors = [self._tensor(name, value) for name, value in feeds.items()]
        return self.pb.InferenceRequest(
            model_name=self.prefix + component, inputs=tensors, requested_output_names=outputs
        )

    def _tensor(self, name: str, value):
        if is_torch(value):
            return self.pb.Tensor.from_dlpack(name, value)
        return self.pb.Tensor(name, value)

    def _unpack(self, component: str, response, outputs: list) -> dict:
        if response.has_error():
            raise StageError(f"{self.prefix}{component} failed: {response.error().message()}")
        returned = {tensor.name(): tensor for tensor in response.output_tensors()}  # one pass, not one per name
        if missing := [name for name in outputs if name not in returned]:
            raise StageError(f"{self.prefix}{component} returned no {', '.join(missing)}")
        return {name: _array(returned[name]) for name in outputs}

    def run(self, component: str, feeds: dict, outputs: list | None = None) -> dict:
        outputs = outputs or self.outputs[component]
        return self._unpack(component, self._request(component, feeds, outputs).exec(), outputs)

    async def arun(self, component: str, feeds: dict, outputs: list | None = None) -> dict:
        outputs = outputs or self.outputs[component]
        return self._unpack(component, await self._request(component, feeds, outputs).async_exec(), outputs)

    def in_process(self, component: str) -> bool:
        return False


def is_torch(value) -> bool:
    """A torch tensor (GPU target), told apart without importing torch."""
    return type(value).__module__.startswith("torch")


def _array(tensor):
    """A BLS output as numpy (CPU) or a torch tensor (GPU, zero-copy by DLPack)."""
    if tensor.is_cpu():
        return tensor.as_numpy()
    import torch  # noqa: PLC0415 (GPU target only)

    return torch.from_dlpack(tensor.to_dlpack())


class OrtStages:
    """The component graphs run in-process by ONNX Runtime (CPU). ``files``: {component: path}."""

    def __init__(self, files: dict, threads: int = 0):
        import onnxruntime as ort  # noqa: PLC0415 (in-process runs only: tests and tools)

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.sessions = {
            c: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for c, p in files.items()
        }

    def run(self, component: str, feeds: dict, outputs: list | None = None) -> dict:
        session = self.sessions[component]
        names = outputs or [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, feeds)))

    async def arun(self, component: str, feeds: dict, outputs: list | None = None) -> dict:
        return self.run(component, feeds, outputs)

    def in_process(self, component: str) -> bool:
        return True


class LocalStages:
    """The components of ``runners`` run in this process; every other component goes to ``other``
    (BlsStages). ``outputs``: {component: [output names]} (what a call asks for by default).

    ``runners``: {component: (wide runner, [narrow runners])} (component_runtime.py runners: one OpenVINO infer
    request each, so one call at a time). The wide one runs on all its threads and takes a call that finds
    the component otherwise idle: the lowest latency for a lone click. A call that arrives while others
    run or wait takes a narrow one (one thread): under load, threads of concurrent calls only contend, and
    OpenVINO's idle workers spin (served clicks cost 11 ms of CPU each on two threads, 4 on one). The calls
    of one event-loop step (one batch) count each other before any chooses. They run in a thread pool (the
    runtimes release the GIL).

    ``seconds`` / ``calls`` (Counters by model name) add up each call's inference time, measured around
    the runner alone: the compute a Triton model would report in its statistics (the metrics publish it).
    """

    def __init__(self, other, runners: dict[str, tuple], outputs: dict[str, list[str]], prefix: str = "sam3_"):
        self.other, self.outputs, self.prefix = other, outputs, prefix
        self.runners = {component: (wide, list(narrow)) for component, (wide, narrow) in runners.items()}
        threads = sum(1 + len(narrow) for _, narrow in self.runners.values())
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="sam3-local")
        self.free: dict[str, tuple] = {}  # component: (wide queue, narrow queue), of the loop ``_loop``
        self._loop = None
        self.wanting = Counter()  # (component, priority): calls running or waiting
        self.seconds, self.calls = Counter(), Counter()

    def in_process(self, component: str) -> bool:
        return component in self.runners

    def run(self, component: str, feeds: dict, outputs: list | None = None) -> dict:
        if not self.in_process(component):
            return self.other.run(component, feeds, outputs)
        wide, _ = self.runners[component]
        return self._record(component, *_timed(wide, feeds, outputs or self.outputs[component]))

    async def arun(self, component: str, feeds: dict, outputs: list | None = None) -> dict:
        if not self.in_process(component):
            return await self.other.arun(component, feeds, outputs)
        key = component, PRIORITY.get()
        self.wanting[key] += 1
        try:
            runner, queue = await self._acquire(component)
            names = outputs or self.outputs[component]
            running = asyncio.get_running_loop().run_in_executor(self.pool, _timed, runner, feeds, names)
            running.add_done_callback(lambda run: self._ended(component, run, queue, runner))
            try:  # shielded: a caller cancelled meanwhile leaves the run to end before its runner is free
                outputs, _ = await asyncio.shield(running)
            except Exception as err:  # noqa: BLE001 - a runtime failure is the component's, as through BLS
                raise StageError(f"{self.prefix}{component} (in process) failed: {type(err).__name__}: {err}") from err
        finally:
            self.wanting[key] -= 1
        return outputs

    async def _acquire(self, component: str) -> tuple:
        """(runner, the queue it goes back to): the wide runner for a call alone at its priority, else the next
        narrow one (a click during auto mode's calls takes the idle wide runner; those calls take narrow ones)."""
        wide, narrow = self._queues(component)
        await asyncio.sleep(0)  # let the other calls of this loop step register in ``wanting``
        alone = self.wanting[component, PRIORITY.get()] == 1
        if (alone and not wide.empty()) or not self.runners[component][1]:
            return await wide.get(), wide
        return await narrow.get(), narrow

    def _queues(self, component: str) -> tuple:
        """(wide queue, narrow queue) of free runners, made anew for a new event loop (``Sam3Pipeline.run`` starts
        one per call; asyncio queues belong to one loop)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self.free, self._loop = {}, loop
        if component not in self.free:
            wide, narrow = PriorityQueue(), PriorityQueue()
            runner, runners = self.runners[component]
            wide.put_nowait(runner)
            for one in runners:
                narrow.put_nowait(one)
            self.free[component] = (wide, narrow)
        return self.free[component]

    def _ended(self, component: str, run: asyncio.Future, queue, runner) -> None:
        """``run`` ended (its caller may be gone): its runner goes back to ``queue``, its time is counted."""
        queue.put_nowait(runner)
        if not run.cancelled() and run.exception() is None:
            self._record(component, *run.result())

    def _record(self, component: str, outputs: dict, seconds: float) -> dict:
        self.seconds[self.prefix + component] += seconds
        self.calls[self.prefix + component] += 1
        return outputs

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.runners = {}


def _timed(runner, feeds: dict, names: list) -> tuple[dict, float]:
    """({name: fresh array}, seconds) of one run of ``runner`` (a component_runtime runner)."""
    start = time.perf_counter()
    arrays = runner.run(names, feeds, shared=False)
    return dict(zip(names, arrays)), time.perf_counter() - start
