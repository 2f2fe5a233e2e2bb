"""The image cache's host memory (arena.py): slots are reused only when nothing reads them.

A pipeline with an arena, on the tiny model's graphs in ONNX Runtime, keeps its cached embeddings in
the arena's slots and gives the same results as one without.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from export.manifest import load_manifest
from tests.test_orchestrator import make_pipeline, request


@pytest.fixture(scope="module")
def arena(orchestrator_modules):
    import arena  # noqa: PLC0415 (after sys.path setup)

    return arena


def _arrays(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"fpn": rng.standard_normal((1, 3, 5, 5)).astype(np.float32), "ids": rng.integers(0, 9, (1, 7))}


def _warm(arena_module, count: int):
    layout = {name: (a.shape, a.dtype) for name, a in _arrays(0).items()}
    slots = arena_module.SlotArena(arena_module.slot_bytes(layout), count, log=lambda line: None)
    slots.warm()
    return slots


def test_a_slot_is_reused_only_once_nothing_views_it(arena):
    slots = _warm(arena, 2)
    first, second = slots.pack(_arrays(1)), slots.pack(_arrays(2))
    for packed, seed in ((first, 1), (second, 2)):
        for name, array in _arrays(seed).items():
            assert packed[name].dtype == array.dtype
            np.testing.assert_array_equal(packed[name], array)
    assert slots.pack(_arrays(3)) is None  # both slots in use
    part = first["fpn"][0, 1:2]  # a view of a view still reads the first slot
    del first
    assert slots.pack(_arrays(3)) is None
    np.testing.assert_array_equal(part, _arrays(1)["fpn"][0, 1:2])
    del part
    third = slots.pack(_arrays(3))
    np.testing.assert_array_equal(third["fpn"], _arrays(3)["fpn"])
    np.testing.assert_array_equal(second["fpn"], _arrays(2)["fpn"])  # the slot in use was not touched


def test_arrays_larger_than_a_slot_are_not_packed(arena):
    slots = _warm(arena, 1)
    big = {"fpn": np.zeros((1, 3, 50, 50), np.float32)}
    assert slots.pack(big) is None and slots.pack(_arrays(1)) is not None


def test_warm_logs_and_close_stops_it(arena):
    lines = []
    slots = arena.SlotArena(2**20, 4, log=lines.append)
    slots.warm()
    assert slots.ready == 4 and "4 slots of 1.0 MiB" in lines[-1]
    stopped = arena.SlotArena(2**20, 10**6, log=lines.append)  # a terabyte: close must stop it early
    worker = threading.Thread(target=stopped.warm)
    worker.start()
    stopped.close()
    worker.join(timeout=60)
    assert not worker.is_alive() and stopped.ready < 10**6


def test_cache_arena_holds_as_many_images_as_the_cache(arena):
    layout = {name: (a.shape, a.dtype) for name, a in _arrays(0).items()}
    size, lines = arena.slot_bytes(layout), []
    assert arena.cache_arena(layout, size - 1, log=lines.append) is None and not lines
    slots = arena.cache_arena(layout, 3 * size + 1, log=lines.append)
    assert (slots.size, slots.count) == (size, 3) and "image cache of 3 images" in lines[0]
    slots.close()


def test_make_room_evicts_least_recent_entries(modules):
    lru = modules["cache"].ByteLRU(3000)
    for key in "abc":
        lru.put(key, np.zeros(1000, np.uint8))
    lru.make_room(1500)
    assert [lru.get(k) is None for k in "abc"] == [True, True, False] and lru.used == 1000
    lru.make_room(10**6)  # more than the cache holds: nothing to make room for
    assert lru.get("c") is not None


def test_the_pipeline_caches_embeddings_in_the_arena(modules, arena, tiny_artifacts, coffee_jpeg):
    """Two slots, a cache of two images: each new image takes the slot of the one evicted for it, and every
    result equals that of a pipeline without an arena."""
    from sam3_spec import NP_DTYPES  # noqa: PLC0415 (after sys.path setup)

    plain, pipe = (make_pipeline(modules, tiny_artifacts, modules["post"]) for _ in range(2))
    layout = arena.image_layout(load_manifest(tiny_artifacts).specs()["vision"], NP_DTYPES)
    per_image = sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for shape, dtype in layout.values())
    pipe.image_cache = modules["cache"].ByteLRU(2 * per_image)
    pipe.arena = arena.SlotArena(arena.slot_bytes(layout), 2, log=lambda line: None)
    pipe.arena.warm()
    fields = {"mode": [b"point"], "points": [[120.0, 200.0]], "point_labels": [1]}
    for name in ("coffee-1", "coffee-2", "coffee-3", "coffee-2"):
        served = pipe.run(request(modules, coffee_jpeg, image_id=[name.encode()], **fields))
        reference = plain.run(request(modules, coffee_jpeg, image_id=[name.encode()], **fields))
        np.testing.assert_array_equal(served.masks.dense(), reference.masks.dense())
        np.testing.assert_array_equal(served.scores, reference.scores)
    assert pipe.image_cache.get("id:coffee-1") is None
    for name in ("coffee-2", "coffee-3"):
        arrays = pipe.image_cache.get("id:" + name).outputs
        assert all(any(a.base is slot for slot in pipe.arena._slots) for a in arrays.values()), name
