"""Request priorities inside the orchestrator (triton_repo/sam3/1/priority.py): the pool and the runner queue
hand out work by the submitting task's priority, then by arrival."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import CancelledError

import pytest


@pytest.fixture(scope="module")
def priority(orchestrator_modules):
    import priority  # noqa: PLC0415 (after sys.path setup)

    return priority


def at(priority, level: int, fn):
    """``fn()`` run with PRIORITY set to ``level`` (as a request's task has it)."""
    token = priority.PRIORITY.set(level)
    try:
        return fn()
    finally:
        priority.PRIORITY.reset(token)


def test_the_pool_runs_waiting_jobs_by_priority_then_arrival(priority):
    pool = priority.PriorityPool(1)
    started, release, order = threading.Event(), threading.Event(), []
    blocker = pool.submit(lambda: (started.set(), release.wait(5)))
    assert started.wait(5)  # the one worker is busy: everything below waits
    jobs = [(2, "auto-1"), (1, "text"), (2, "auto-2"), (0, "click-1"), (0, "click-2")]
    futures = [at(priority, level, lambda name=name: pool.submit(order.append, name)) for level, name in jobs]
    release.set()
    for future in [blocker, *futures]:
        future.result(timeout=5)
    assert order == ["click-1", "click-2", "text", "auto-1", "auto-2"]
    pool.shutdown()


def test_the_pool_returns_results_and_errors_and_refuses_after_shutdown(priority):
    pool = priority.PriorityPool(2)
    assert pool.submit(pow, 2, 10).result(timeout=5) == 1024
    with pytest.raises(ZeroDivisionError):
        pool.submit(lambda: 1 / 0).result(timeout=5)
    pool.shutdown(wait=True)
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(pow, 2, 3)


def test_shutdown_can_cancel_the_waiting_jobs(priority):
    pool = priority.PriorityPool(1)
    started, release = threading.Event(), threading.Event()
    running = pool.submit(lambda: (started.set(), release.wait(5)) and "done")
    assert started.wait(5)
    waiting = pool.submit(pow, 2, 3)
    pool.shutdown(wait=False, cancel_futures=True)
    release.set()
    assert running.result(timeout=5) == "done"  # a running job is never interrupted
    with pytest.raises(CancelledError):
        waiting.result(timeout=5)


def test_the_queue_hands_a_freed_item_to_the_most_urgent_waiter(priority):
    async def scenario():
        queue, order = priority.PriorityQueue(["runner"]), []
        held = await queue.get()

        async def want(level: int, name: str):
            priority.PRIORITY.set(level)
            item = await queue.get()
            order.append(name)
            await asyncio.sleep(0)
            queue.put_nowait(item)

        waiters = [asyncio.ensure_future(want(level, name)) for level, name in ((2, "auto"), (0, "click"), (1, "text"))]
        await asyncio.sleep(0.01)  # all three wait
        assert queue.empty() and order == []
        queue.put_nowait(held)
        await asyncio.gather(*waiters)
        return order, queue

    order, queue = asyncio.run(scenario())
    assert order == ["click", "text", "auto"] and not queue.empty()


def test_a_cancelled_waiter_loses_no_item(priority):
    async def scenario():
        queue = priority.PriorityQueue(["runner"])
        held = await queue.get()
        first = asyncio.ensure_future(queue.get())
        second = asyncio.ensure_future(queue.get())
        await asyncio.sleep(0)
        first.cancel()  # cancelled while waiting: the item goes to the next waiter
        queue.put_nowait(held)
        got = await second
        with pytest.raises(asyncio.CancelledError):
            await first
        queue.put_nowait(got)
        return await asyncio.wait_for(queue.get(), 1)

    assert asyncio.run(scenario()) == "runner"


def test_an_item_handed_to_a_waiter_cancelled_before_it_woke_goes_back(priority):
    async def scenario():
        queue = priority.PriorityQueue(["runner"])
        held = await queue.get()
        waiter = asyncio.ensure_future(queue.get())
        await asyncio.sleep(0)
        queue.put_nowait(held)  # handed over ...
        waiter.cancel()  # ... and cancelled before the waiter ran again
        with pytest.raises(asyncio.CancelledError):
            await waiter
        return queue.empty(), await asyncio.wait_for(queue.get(), 1)

    assert asyncio.run(scenario()) == (False, "runner")
