"""A least-recently-used cache bounded in bytes, with hit/miss counters.

Used for image embeddings (key: image_id or a hash of the encoded bytes) and text
features (key: the concept string). Values are dicts/tuples of numpy arrays (or GPU
tensors); their size is the sum of ``nbytes`` (or ``numel·element_size``).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from threading import Lock


def value_bytes(value) -> int:
    """Bytes held by an array, a tensor, or a (nested) dict/tuple/list/dataclass of them."""
    if isinstance(value, dict):
        return sum(value_bytes(v) for v in value.values())
    if isinstance(value, (tuple, list)):
        return sum(value_bytes(v) for v in value)
    if hasattr(value, "nbytes"):
        return int(value.nbytes)
    if hasattr(value, "element_size"):
        return int(value.numel() * value.element_size())
    if hasattr(value, "__dict__"):
        return value_bytes(vars(value))
    return 0


def content_key(data: bytes) -> str:
    """Stable key of encoded image bytes (BLAKE2b, 16-byte digest)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


class ByteLRU:
    """LRU mapping with a byte budget; an entry larger than the budget is not stored."""

    def __init__(self, capacity_bytes: int):
        self.capacity = int(capacity_bytes)
        self.hits = self.misses = self.used = 0
        self._items: OrderedDict = OrderedDict()
        self._lock = Lock()

    def get(self, key):
        """The cached value (marked most recent) or None; counts a hit or a miss."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key][0]
            self.misses += 1
            return None

    def put(self, key, value) -> None:
        size = value_bytes(value)
        if size > self.capacity:
            return
        with self._lock:
            if key in self._items:
                self.used -= self._items.pop(key)[1]
            self._items[key] = (value, size)
            self.used += size
            self._evict()

    def make_room(self, size: int) -> None:
        """Evict least-recent entries until ``size`` more bytes fit (before an entry is built, so that the
        memory of the evicted one can take it: see arena.py); nothing for an entry the cache could never hold."""
        if size > self.capacity:
            return
        with self._lock:
            self._evict(size)

    def _evict(self, incoming: int = 0) -> None:
        while self._items and self.used + incoming > self.capacity:
            _, (_, size) = self._items.popitem(last=False)
            self.used -= size

    def __len__(self) -> int:
        return len(self._items)
