"""Response cache: an LRU of outputs keyed by a digest of the request's tensors."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from modelport.types import Tensors

__all__ = ["ResponseCache", "request_digest"]


def request_digest(inputs: Tensors, outputs: Sequence[str] | None) -> bytes:
    """A digest of names, dtypes, shapes and bytes: equal requests, equal digests."""
    hasher = hashlib.blake2b(digest_size=20)
    hasher.update(repr(tuple(outputs) if outputs else None).encode())
    for name in sorted(inputs):
        array = inputs[name]
        hasher.update(f"{name}\0{array.dtype.str}\0{array.shape}\0".encode())
        if array.dtype == object:
            for item in array.ravel():
                value = item if isinstance(item, bytes) else str(item).encode()
                hasher.update(len(value).to_bytes(4, "little"))
                hasher.update(value)
        else:
            hasher.update(np.ascontiguousarray(array).data)
    return hasher.digest()


class ResponseCache:
    """At most ``capacity`` responses; the least recently used goes first.

    Used from the event loop only. Cached arrays are made read-only, so a caller cannot
    change what the next hit returns.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[bytes, Tensors] = OrderedDict()

    def get(self, key: bytes) -> Tensors | None:
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
        return found

    def put(self, key: bytes, outputs: Tensors) -> None:
        frozen = {}
        for name, array in outputs.items():
            copy = np.array(array, copy=True)
            copy.flags.writeable = False
            frozen[name] = copy
        self._entries[key] = frozen
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
