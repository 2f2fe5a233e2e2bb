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

The slots are one shared-memory file (``memfd_create``), so the component models can reach them: a
``reserve``d slot's ``ref`` (sam3_spec.FEATURES_REF) lets the vision model write an image's outputs
straight into it, and the heads read them from it, instead of every feature tensor crossing the Python
backend's shared memory twice (triton_repo/ort_component/1/shared_features.py). Other processes open it
as /proc/<pid>/fd/<fd>: it has no name to leak, and goes when the last process mapping it does. Where
memfd_create is missing the slots are private memory and ``reserve`` gives None.

The file's first ARENA_HEADER bytes hold a random token that every ref carries: a component model maps only
a file named ARENA_FILE and uses it only for a ref with that file's token, so a Triton client, who can
send a ``features_ref`` too but cannot read the file, can neither point a model at another file nor at
the arena.
"""

from __future__ import annotations

import functools
import json
import mmap
import os
import secrets
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np

from sam3_spec import ARENA_FILE, ARENA_HEADER

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


@dataclass
class Reserved:
    """A slot taken for one image's vision outputs: ``arrays`` {name: empty array in the slot} (holding them
    keeps the slot taken) and ``ref`` (JSON) by which another process finds them."""

    arrays: dict
    ref: str


class SlotArena:
    """``count`` slots of ``size`` bytes each (uint8), made by ``warm`` (call it in a background thread)."""

    def __init__(self, size: int, count: int, log=functools.partial(print, flush=True)):
        self.size, self.count, self.log = int(size), int(count), log
        self._slots: list[np.ndarray] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._free_refs = _listed_refs()
        self._fd, self._memory = _shared_memory(ARENA_HEADER + self.size * self.count, log)
        self._token = secrets.token_hex(16)
        if self._memory is not None:
            self._memory[: len(self._token)] = self._token.encode()

    @property
    def path(self) -> str | None:
        """Where another process of this user opens the slots' file (None: private memory)."""
        return None if self._fd is None else f"/proc/{os.getpid()}/fd/{self._fd}"

    @property
    def ready(self) -> int:
        """Slots allocated and touched so far."""
        return len(self._slots)

    def warm(self) -> None:
        """Allocate and touch every slot (one write per page), at the lowest CPU priority; stops on close."""
        _lowest_priority(self.log)
        start = time.perf_counter()
        while self.ready < self.count and not self._closed.is_set():
            slot = self._slot(self.ready)
            slot[::PAGE] = 0
            with self._lock:
                self._slots.append(slot)
        seconds = time.perf_counter() - start
        self.log(
            f"sam3: image cache memory ready: {self.ready} slots of {self.size / 2**20:.1f} MiB in {seconds:.1f} s"
        )

    def _slot(self, index: int) -> np.ndarray:
        if self._memory is None:
            return np.empty(self.size, np.uint8)
        return np.frombuffer(self._memory, np.uint8, self.size, ARENA_HEADER + index * self.size)

    def close(self) -> None:
        """Stop ``warm``; slots already made stay usable until the arena is dropped. Other processes can no
        longer open the file (their mappings stay)."""
        self._closed.set()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def reserve(self, layout: dict[str, tuple]) -> Reserved | None:
        """A free slot for one image of ``layout`` {name: (shape, dtype)}, its arrays not yet written; None
        when no slot is free, they do not fit, or the slots are private memory."""
        if self.path is None or slot_bytes(layout) > self.size:
            return None
        index = self._take()
        if index is None:
            return None
        arrays, offsets = _carve(self._slots[index], layout)
        start = ARENA_HEADER + index * self.size  # the slot's first byte in the file
        offsets = {name: start + offset for name, offset in offsets.items()}
        return Reserved(arrays, json.dumps({"path": self.path, "token": self._token, "offsets": offsets}))

    def pack(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        """Copies of ``arrays`` in one free slot (views of it, same shapes and dtypes), or None when no slot is
        free or they do not fit in one."""
        layout = {name: (a.shape, a.dtype) for name, a in arrays.items()}
        if slot_bytes(layout) > self.size:
            return None
        index = self._take()
        if index is None:
            return None
        packed, _ = _carve(self._slots[index], layout)
        for name, array in arrays.items():
            np.copyto(packed[name], array)
        return packed

    def _take(self) -> int | None:
        """The index of a slot no array views (see the module docstring), or None."""
        with self._lock:
            for i in range(len(self._slots)):
                if sys.getrefcount(self._slots[i]) == self._free_refs:
                    return i
        return None


def _carve(slot: np.ndarray, layout: dict[str, tuple]) -> tuple[dict, dict]:
    """({name: array of ``layout`` {name: (shape, dtype)} in ``slot``, unwritten}, {name: its byte offset in the
    slot}): the arrays one after the other, each aligned (``slot_bytes``)."""
    arrays, offsets, offset = {}, {}, 0
    for name, (shape, dtype) in layout.items():
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        arrays[name] = slot[offset : offset + nbytes].view(dtype).reshape(shape)
        offsets[name] = offset
        offset += aligned(nbytes)
    return arrays, offsets


def _shared_memory(nbytes: int, log) -> tuple[int | None, mmap.mmap | None]:
    """(fd, mapping) of a new anonymous shared-memory file of ``nbytes``, or (None, None) where the system has no
    memfd_create (the slots are then private memory)."""
    if not hasattr(os, "memfd_create") or nbytes == 0:
        return None, None
    try:
        fd = os.memfd_create(ARENA_FILE)
        os.ftruncate(fd, nbytes)
        return fd, mmap.mmap(fd, nbytes, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    except OSError as err:
        log(f"sam3: image cache in private memory, features go to the heads as tensors ({err})")
        return None, None


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
