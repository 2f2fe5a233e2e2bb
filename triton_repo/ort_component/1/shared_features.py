"""Image features by reference, on the component's side: the orchestrator's arena mapped into this process.

The orchestrator (triton_repo/sam3/1/arena.py) keeps each cached image's vision outputs in one slot of a
shared-memory file. A ``features_ref`` (sam3_spec.FEATURES_REF) names that file and the byte offset of
each output in it: the vision model writes its outputs there, the heads read their image features from
there as views (no copy). This saves the Python backend's copies of those tensors into and out of its
shared memory (BLS), 4-6 ms per cold request on the bench model.

A ref is honoured only for the orchestrator's arena: the path must link to a memfd of the arena's name
(a client cannot point a model at another file), and the ref must carry the token written at the start
of that file (a client, who cannot read the file, cannot forge one).

Mapping costs one page fault per 4 KiB page the first time this process touches it: a 16 MB write into
an unmapped slot took 9 ms against 1.3 ms mapped (2-core VM). So a new mapping is populated
(MADV_POPULATE_WRITE: page tables filled, contents untouched) by a background thread at the lowest
priority; requests use the mapping meanwhile.
"""

from __future__ import annotations

import hmac
import json
import mmap
import os
import threading

import numpy as np

MADV_POPULATE_WRITE = 23  # Linux 5.14+: fault pages in writable without changing them
POPULATE_CHUNK = 64 * 2**20  # bytes per madvise call, so that a replaced mapping stops the thread soon


class FeatureRefError(ValueError):
    """A features_ref that cannot be used (unreadable JSON, a file that cannot be mapped, an offset outside
    it); the message starts "features_ref" so that the orchestrator can tell it from a model failure."""


def parse_refs(values: np.ndarray) -> list[dict]:
    """The refs of a ``features_ref`` tensor (BYTES, any shape: one per image), as dicts."""
    refs = []
    for value in values.reshape(-1):
        try:
            ref = json.loads(value.decode() if isinstance(value, bytes) else str(value))
            if not isinstance(ref.get("path"), str) or not isinstance(ref.get("offsets"), dict):
                raise ValueError("needs a string 'path' and an object 'offsets'")
        except (ValueError, AttributeError) as err:
            raise FeatureRefError(f"features_ref {value!r:.120} is not a ref: {err}") from None
        refs.append(ref)
    return refs


class ArenaMaps:
    """The arena file of the latest ref, mapped once. A ref with another path (the orchestrator restarted)
    replaces the mapping; the old one is released once no array views it. ``file``: the arena's memfd name;
    ``header``: bytes before its first slot, the token first (sam3_spec.ARENA_FILE, ARENA_HEADER)."""

    def __init__(self, file: str, header: int, log=print):
        self.file, self.header, self.log = file, int(header), log
        self.path: str | None = None
        self.map: mmap.mmap | None = None
        self.token = ""
        self._lock = threading.Lock()

    def views(self, ref: dict, shapes: dict[str, tuple]) -> dict[str, np.ndarray]:
        """{name: array in the arena} of each ``shapes`` entry {name: (shape, dtype)} at the ref's offsets."""
        arena, token = self._mapping(ref)
        _check_token(ref, token)
        offsets, found = ref["offsets"], {}
        for name, (shape, dtype) in shapes.items():
            if name not in offsets:
                raise FeatureRefError(f"features_ref has no offset for {name!r} (it has {sorted(offsets)})")
            count, start = int(np.prod(shape)), int(offsets[name])
            if start < self.header or start + count * np.dtype(dtype).itemsize > len(arena):
                raise FeatureRefError(f"features_ref: {name!r} at byte {start} lies outside the arena's slots")
            found[name] = np.frombuffer(arena, dtype, count, start).reshape(shape)
        return found

    def _mapping(self, ref: dict) -> tuple[mmap.mmap, str]:
        """(the mapping, its token) of the ref's file; a new file replaces the mapping only for a ref with its token."""
        with self._lock:
            path = ref["path"]
            if path != self.path:
                arena = _map(path, self.file)
                token = bytes(arena[: self.header]).split(b"\0", 1)[0].decode("ascii", "replace")
                _check_token(ref, token)
                self.map, self.path, self.token = arena, path, token
                threading.Thread(target=_populate, args=(arena, self.log), name="arena-populate", daemon=True).start()
            return self.map, self.token


def _check_token(ref: dict, token: str) -> None:
    """FeatureRefError unless ``ref`` carries ``token``, the (non-empty) token of the file it names."""
    if not token or not hmac.compare_digest(str(ref.get("token", "")).encode(), token.encode()):
        raise FeatureRefError(f"features_ref: the token does not match the image arena {ref['path']}")


def _map(path: str, file: str) -> mmap.mmap:
    """``path`` mapped shared, read-write, whole, where it is a memfd named ``file`` (a /proc/<pid>/fd/<n> link to
    "/memfd:<file> (deleted)"); FeatureRefError for any other path."""
    try:
        target = os.readlink(path)
        if not target.startswith(f"/memfd:{file} "):
            raise FeatureRefError(f"features_ref: {path} is not an image arena")
        with open(path, "r+b") as handle:  # the mapping outlives the file object
            return mmap.mmap(handle.fileno(), 0, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    except (OSError, ValueError) as err:
        raise FeatureRefError(f"features_ref: cannot map the image arena {path}: {err}") from None


def _populate(arena: mmap.mmap, log) -> None:
    """Fault every page of ``arena`` in (MADV_POPULATE_WRITE) at the lowest priority; where the kernel lacks
    it, pages fault in as requests first touch them."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except OSError as err:
        log(f"image arena: populating at normal priority ({err})")
    try:
        for start in range(0, len(arena), POPULATE_CHUNK):
            arena.madvise(MADV_POPULATE_WRITE, start, min(POPULATE_CHUNK, len(arena) - start))
    except (OSError, ValueError) as err:  # an old kernel (EINVAL), or the mapping was closed
        log(f"image arena: pages fault in on first use ({err})")
