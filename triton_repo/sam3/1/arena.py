"""Host memory for the image-embedding cache: fixed-size slots, touched once, reused (CPU target).

Why: a BLS output lives in the orchestrator's shared-memory pool. Cached there, it keeps its block,
so until the cache is full every cold image's embeddings land in new pages of /dev/shm, and a page
costs a fault the first time it is written. On our 2-core VM 16.6 MB of new pages took ~60 ms (the
same copy into memory written before: ~1 ms), and the bench model's cold point requests waited
40-64 ms on their BLS calls until about 60 images had filled the cache, 7-15 ms after.

So each cached image's arrays are copied into a slot of private memory (1-2 ms) and its BLS output
block goes back to the pool at once, to be reused by the next call. Slots are allocated and touched
by a background thread at start (lowest CPU priority), as many as the cache's byte budget holds.
A slot is free when no array views it: the cache evicted its image and no request still reads it
(``sys.getrefcount``; numpy views keep their owner alive), so memory a request reads is never
overwritten. With no free slot, the caller keeps the BLS arrays as they are (the old behaviour).
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import time

import numpy as np

ALIGN = 64  # bytes: each array of a slot starts on a cache line
PAGE = 4096  # bytes: one write per page touches the whole slot


def aligned(nbytes: int) -> int:
    """``nbytes`` rounded up to a multiple of ALIGN."""
    return -(-nbytes // ALIGN) * ALIGN


def image_layout(vision_spec, np_dtypes: dict) -> dict[str, tuple]:
    """{output: (shape, numpy dtype)} of one image's vision outputs (batch 1), from the component spec."""
    return {t.name: (t.resolve({"batch": 1}), np_dtypes[t.dtype]) for t in vision_spec.outputs}


def slot_bytes(layout: dict[str, tuple]) -> int:
    """Bytes of one slot for ``layout`` {name: (shape, numpy dtype)} (each array aligned)."""
    return sum(aligned(int(np.prod(shape)) * np.dtype(dtype).itemsize) for shape, dtype in layout.values())


def cache_arena(layout: dict[str, tuple], capacity: int, log=functools.partial(print, flush=True)):
    """A SlotArena with a slot for each image of ``layout`` that ``capacity`` bytes hold, touched from now on by a
    background thread; None when not one fits."""
    size = slot_bytes(layout)
    count = capacity // size
    if count == 0:
        return None
    arena = SlotArena(size, count, log)
    log(
        f"sam3: image cache of {count} images ({size / 2**20:.1f} MiB each): touching its host memory in the background"
    )
    threading.Thread(target=arena.warm, name="sam3-arena", daemon=True).start()
    return arena


class SlotArena:
    """``count`` slots of ``size`` bytes each (uint8), made by ``warm`` (call it in a background thread)."""

    def __init__(self, size: int, count: int, log=functools.partial(print, flush=True)):
        self.size, self.count, self.log = int(size), int(count), log
        self._slots: list[np.ndarray] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._free_refs = _listed_refs()

    @property
    def ready(self) -> int:
        """Slots allocated and touched so far."""
        return len(self._slots)

    def warm(self) -> None:
        """Allocate and touch every slot (one write per page), at the lowest CPU priority; stops on close."""
        _lowest_priority(self.log)
        start = time.perf_counter()
        while self.ready < self.count and not self._closed.is_set():
            slot = np.empty(self.size, np.uint8)
            slot[::PAGE] = 0
            with self._lock:
                self._slots.append(slot)
        seconds = time.perf_counter() - start
        self.log(
            f"sam3: image cache memory ready: {self.ready} slots of {self.size / 2**20:.1f} MiB in {seconds:.1f} s"
        )

    def close(self) -> None:
        """Stop ``warm``; slots already made stay usable until the arena is dropped."""
        self._closed.set()

    def pack(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        """Copies of ``arrays`` in one free slot (views of it, same shapes and dtypes), or None when no slot is
        free or they do not fit in one."""
        if sum(aligned(a.nbytes) for a in arrays.values()) > self.size:
            return None
        slot = self._take()
        if slot is None:
            return None
        packed, offset = {}, 0
        for name, array in arrays.items():
            packed[name] = slot[offset : offset + array.nbytes].view(array.dtype).reshape(array.shape)
            np.copyto(packed[name], array)
            offset += aligned(array.nbytes)
        return packed

    def _take(self):
        """A slot no array views (see the module docstring), or None."""
        with self._lock:
            for i in range(len(self._slots)):
                if sys.getrefcount(self._slots[i]) == self._free_refs:
                    return self._slots[i]
        return None


def _listed_refs() -> int:
    """``sys.getrefcount`` of an array that only a list holds, read as ``_take`` reads it (2 on CPython 3.10-3.13:
    the list and the call's argument), measured rather than assumed."""
    listed = [np.empty(0, np.uint8)]
    return sys.getrefcount(listed[0])


def _lowest_priority(log) -> None:
    """Nice 19 for the calling thread only (Linux: setpriority on a thread id), so touching pages yields to
    requests; where that is refused the thread runs at normal priority."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except OSError as err:
        log(f"sam3: image cache memory is touched at normal priority ({err})")
