"""Request priorities inside the orchestrator: a click is not made to wait behind "segment everything".

Every request's coroutine runs with ``PRIORITY`` set from its mode (``MODE_PRIORITY``: point and box 0,
text 1, auto 2; lower goes first). Two places where a request's work can queue behind another's honour it:

- ``PriorityPool``: the thread pool for decoding, post-processing and encoding. ``run_in_executor`` calls
  ``submit`` in the submitting task, so a job takes that task's priority.
- ``PriorityQueue``: the free runners of an in-process head (stages.LocalStages).

Equal priorities keep their arrival order. A job or call already running is never interrupted.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import itertools
import threading
from concurrent.futures import Executor, Future

PRIORITY = contextvars.ContextVar("sam3_priority", default=0)
MODE_PRIORITY = {"point": 0, "box": 0, "text": 1, "auto": 2}


class PriorityPool(Executor):
    """``max_workers`` threads that take the waiting job of the lowest ``PRIORITY`` (at submit) first."""

    def __init__(self, max_workers: int, thread_name_prefix: str = "sam3"):
        self._jobs: list = []  # heap of (priority, arrival, Future, fn, args, kwargs); None fn stops a worker
        self._ready = threading.Condition()
        self._arrival = itertools.count()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{thread_name_prefix}_{i}", daemon=True)
            for i in range(max_workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future = Future()
        with self._ready:
            if self._closed:
                raise RuntimeError("cannot schedule new jobs after shutdown")
            heapq.heappush(self._jobs, (PRIORITY.get(), next(self._arrival), future, fn, args, kwargs))
            self._ready.notify()
        return future

    def _work(self) -> None:
        while True:
            with self._ready:
                while not self._jobs:
                    self._ready.wait()
                _, _, future, fn, args, kwargs = heapq.heappop(self._jobs)
            if fn is None:
                return
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as err:  # noqa: BLE001 - the job's error goes to its future
                    future.set_exception(err)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._ready:
            self._closed = True
            if cancel_futures:
                for _, _, future, _, _, _ in self._jobs:
                    future.cancel()
            for _ in self._threads:  # after every waiting job (infinite priority)
                heapq.heappush(self._jobs, (float("inf"), next(self._arrival), Future(), None, (), {}))
            self._ready.notify_all()
        if wait:
            for thread in self._threads:
                thread.join()


class PriorityQueue:
    """Free items (runners) handed to waiting coroutines by ``PRIORITY``, then arrival; one event loop."""

    def __init__(self, items=()):
        self._free = list(items)
        self._waiting: list = []  # heap of (priority, arrival, asyncio.Future)
        self._arrival = itertools.count()

    def empty(self) -> bool:
        return not self._free

    async def get(self):
        if self._free and not self._waiting:
            return self._free.pop()
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (PRIORITY.get(), next(self._arrival), future))
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():  # handed over just as the waiter was cancelled
                self.put_nowait(future.result())
            raise

    def put_nowait(self, item) -> None:
        while self._waiting:
            _, _, future = heapq.heappop(self._waiting)
            if not future.done():
                future.set_result(item)
                return
        self._free.append(item)
