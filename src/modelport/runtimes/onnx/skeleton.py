"""An ONNX model's bytes without the payload of its main graph's initializers.

Checking a model at push needs every byte (the ONNX checker gets them all), but reading its
signature, metadata and external-data references needs none of the weights. Parsing a
200 MB model in Python costs as much as the checker's own parse, and neither releases the
GIL; so the push parses this skeleton instead, a few kilobytes, cut out of the protobuf
wire format without decoding the rest.
"""

from __future__ import annotations

from collections.abc import Iterator

__all__ = ["skeleton"]

_MODEL_GRAPH = 7  # ModelProto.graph
_GRAPH_INITIALIZER = 5  # GraphProto.initializer
# TensorProto's value fields: float, int32, string, int64, raw, double and uint64 data.
_TENSOR_PAYLOAD = frozenset({4, 5, 6, 7, 9, 10, 11})
_LENGTH_DELIMITED = 2


class _Malformed(Exception):
    """The bytes do not scan as protobuf; the caller parses them whole and reports that."""


def skeleton(data: bytes) -> bytes | None:
    """``data``, a serialized ``ModelProto``, with the value fields of the main graph's
    initializers left out (their names, types, shapes and external-data fields kept); or
    ``None`` when the bytes do not scan as protobuf, for the full parse to report."""
    view = memoryview(data)
    try:
        out = bytearray()
        for field, wire, start, end, value in _fields(view, 0, len(view)):
            if field == _MODEL_GRAPH and wire == _LENGTH_DELIMITED:
                _append_message(out, field, _strip_graph(view, value, end))
            else:
                out += view[start:end]
        return bytes(out)
    except _Malformed:
        return None


def _strip_graph(view: memoryview, low: int, high: int) -> bytearray:
    out = bytearray()
    for field, wire, start, end, value in _fields(view, low, high):
        if field == _GRAPH_INITIALIZER and wire == _LENGTH_DELIMITED:
            tensor = bytearray()
            for inner, _, inner_start, inner_end, _ in _fields(view, value, end):
                if inner not in _TENSOR_PAYLOAD:
                    tensor += view[inner_start:inner_end]
            _append_message(out, field, tensor)
        else:
            out += view[start:end]
    return out


def _fields(view: memoryview, position: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """(field number, wire type, start of the field, its end, start of its value)."""
    while position < end:
        start = position
        key, position = _varint(view, position, end)
        field, wire = key >> 3, key & 7
        value = position
        if wire == 0:
            _, position = _varint(view, position, end)
        elif wire == 1:
            position += 8
        elif wire == _LENGTH_DELIMITED:
            length, value = _varint(view, position, end)
            position = value + length
        elif wire == 5:
            position += 4
        else:  # groups (3, 4) are not in ONNX's schema
            raise _Malformed
        if position > end or field == 0:
            raise _Malformed
        yield field, wire, start, position, value


def _varint(view: memoryview, position: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while position < end and shift < 70:
        byte = view[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7
    raise _Malformed


def _append_message(out: bytearray, field: int, payload: bytearray) -> None:
    out += _encode_varint(field << 3 | _LENGTH_DELIMITED)
    out += _encode_varint(len(payload))
    out += payload


def _encode_varint(value: int) -> bytes:
    encoded = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            encoded.append(low | 0x80)
        else:
            encoded.append(low)
            return bytes(encoded)
