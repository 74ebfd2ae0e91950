"""Open Inference Protocol tensors: JSON data and raw (binary extension / gRPC raw) bytes.

Pure functions from wire pieces to numpy and back, shared by the REST and gRPC front-ends.
Raw data is little-endian, row-major; BOOL is one byte; each BYTES element is a 4-byte
little-endian length followed by its bytes.

A raw tensor's declared datatype and shape are checked against the model's signature
(``check_declared``) and against its byte count before it is decoded, so that a tensor the
model would refuse costs nothing to refuse.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
import numpy.typing as npt

from modelport.errors import InvalidInput
from modelport.tensorio import MAX_RANK, array_from_json
from modelport.types import DataType, Signature

__all__ = [
    "MAX_ID_LENGTH",
    "OFF_LOOP_BYTES",
    "array_from_data",
    "array_from_raw",
    "check_declared",
    "check_id",
    "check_shape",
    "data_for_json",
    "raw_bytes",
]

OFF_LOOP_BYTES = 64 * 1024
"""Requests from this size up are decoded in a worker thread, not on the event loop. The
hop costs ~70 µs; below it decoding takes at most a few ms (64 KiB of JSON numbers: ~0.1 ms;
of BYTES elements of mixed lengths, 14k of them: ~3 ms), so no request stalls the others
for long, while small requests, the hot path, keep their cost."""

MAX_ID_LENGTH = 256
"""The longest request ``id`` accepted, and so echoed in the response."""

_LENGTH = struct.Struct("<I")
_UNIFORM_LIMIT = 1 << 16  # elements larger than this are few: cut one by one


def check_id(value: Any) -> str:
    """A request's ``id``: a string of at most ``MAX_ID_LENGTH`` characters."""
    if not isinstance(value, str) or len(value) > MAX_ID_LENGTH:
        shown = f"a string of {len(value)} characters" if isinstance(value, str) else repr(value)
        raise InvalidInput(
            f"request 'id' must be a string of at most {MAX_ID_LENGTH} characters, got {shown[:80]}"
        )
    return value


def check_shape(name: str, shape: Any) -> tuple[int, ...]:
    """A request's declared shape: a list of at most ``MAX_RANK`` non-negative integers."""
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise InvalidInput(
            f"input {name!r}: shape must be a list of non-negative integers, got {str(shape)[:80]}"
        )
    if len(shape) > MAX_RANK:
        raise InvalidInput(
            f"input {name!r}: shape has {len(shape)} dimensions; at most {MAX_RANK} are supported"
        )
    return tuple(shape)


def check_declared(
    signature: Signature, name: str, datatype: DataType, shape: tuple[int, ...]
) -> None:
    """Refuse an input the model does not take, before its data is decoded.

    The same judgement (and messages) as ``Signature.validate`` on the decoded tensor, made
    on what the request declares: a name, a datatype and a shape.
    """
    spec = signature.input(name)
    if datatype is not spec.datatype:
        raise InvalidInput(
            f"input {name!r}: expected datatype {spec.datatype.value}, received {datatype.value}"
        )
    if not spec.accepts_shape(shape):
        received = "[" + ", ".join(str(d) for d in shape) + "]"
        raise InvalidInput(
            f"input {name!r}: expected shape {spec.shape_text()}, received {received}"
        )


def array_from_data(
    name: str, datatype: DataType, shape: tuple[int, ...], data: Any
) -> npt.NDArray[Any]:
    """A tensor from JSON ``data`` (flat or nested), checked against ``shape``.

    Values are typed by ``tensorio.array_from_json``, the rule of every JSON edge.
    """
    array = array_from_json(data, datatype, name)
    expected = math.prod(shape)
    if array.size != expected:
        raise InvalidInput(
            f"input {name!r}: shape {list(shape)} needs {expected} elements, data has {array.size}"
        )
    return array.reshape(shape)


def array_from_raw(
    name: str, datatype: DataType, shape: tuple[int, ...], raw: bytes | memoryview
) -> npt.NDArray[Any]:
    """A tensor from raw little-endian bytes, checked against ``shape``.

    Sizes are checked before anything is decoded: ``shape`` must fit the bytes (BYTES
    elements take at least their 4-byte length prefix each).
    """
    expected = math.prod(shape)
    if datatype is DataType.BYTES:
        items = _bytes_elements(name, shape, expected, memoryview(raw))
        array = np.empty(expected, dtype=object)
        array[:] = items
        return array.reshape(shape)
    dtype = datatype.numpy.newbyteorder("<")
    if len(raw) != expected * dtype.itemsize:
        raise InvalidInput(
            f"input {name!r}: shape {list(shape)} of {datatype.value} needs "
            f"{expected * dtype.itemsize} bytes, got {len(raw)}"
        )
    array = np.frombuffer(raw, dtype=dtype).reshape(shape)
    return array if dtype.isnative else array.astype(datatype.numpy)


def _bytes_elements(name: str, shape: tuple[int, ...], count: int, view: memoryview) -> list[bytes]:
    """The ``count`` length-prefixed elements of ``view``, which must hold exactly those."""
    size = len(view)
    if count * _LENGTH.size > size:
        raise InvalidInput(
            f"input {name!r}: shape {list(shape)} needs {count} BYTES elements, at least "
            f"{count * _LENGTH.size} bytes with their length prefixes; got {size}"
        )
    stride = size // count if count > 1 else 0
    if stride and size % count == 0 and stride <= _UNIFORM_LIMIT:
        # Many elements all of one length (tokens, fixed-size records, empty strings) are
        # checked and cut by numpy at once, without a Python step per element. (Had the
        # lengths differed, reading element by element would not meet these prefixes.)
        lengths = np.ndarray((count,), "<u4", buffer=view, strides=(stride,))
        if (lengths == stride - _LENGTH.size).all():
            if stride == _LENGTH.size:
                return [b""] * count
            values = np.ndarray(
                (count,), f"V{stride - 4}", buffer=view, offset=4, strides=(stride,)
            )
            items: list[bytes] = values.tolist()  # bytes, trailing NULs kept (unlike "S")
            return items
    return _split_bytes(name, shape, count, view)


def _split_bytes(name: str, shape: tuple[int, ...], count: int, view: memoryview) -> list[bytes]:
    size = len(view)
    unpack = _LENGTH.unpack_from
    items = []
    offset = 0
    for index in range(count):
        if offset + 4 > size:
            raise InvalidInput(
                f"input {name!r}: shape {list(shape)} needs {count} BYTES elements, "
                f"raw data has {index}"
            )
        (length,) = unpack(view, offset)
        start = offset + 4
        offset = start + length
        if offset > size:
            raise InvalidInput(
                f"input {name!r}: a BYTES element of {length} bytes runs past the data"
            )
        items.append(view[start:offset].tobytes())
    if offset != size:
        raise InvalidInput(
            f"input {name!r}: shape {list(shape)} needs {count} BYTES elements; "
            f"{size - offset} bytes of raw data are left after them"
        )
    return items


def raw_bytes(array: npt.NDArray[Any]) -> bytes:
    """The raw little-endian encoding of a tensor."""
    if array.dtype == object or array.dtype.kind in "SU":
        parts = []
        for item in array.ravel():
            value = item if isinstance(item, bytes) else str(item).encode()
            parts.append(len(value).to_bytes(4, "little"))
            parts.append(value)
        return b"".join(parts)
    little = array.dtype.newbyteorder("<")
    return np.ascontiguousarray(array, dtype=little).tobytes()


def data_for_json(array: npt.NDArray[Any]) -> Any:
    """Flat row-major data that orjson can write (numpy arrays pass through as they are)."""
    dtype = array.dtype
    if dtype.kind in "OSU":
        return [
            item.decode("utf-8", errors="replace") if isinstance(item, bytes) else str(item)
            for item in array.ravel()
        ]
    if dtype.kind == "f" and dtype.itemsize == 2:  # orjson writes no float16
        return array.astype(np.float32).ravel()
    return array.ravel()  # C-contiguous: a view when the array is, else a copy
