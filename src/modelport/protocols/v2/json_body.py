"""V2 JSON request bodies: large ones decoded with simdjson, float tensors straight into numpy.

``orjson.loads`` makes a Python float of every number, and numpy then copies them again: a
224x224 RGB image as JSON (1.6 MB, 150k numbers) took 7.6 ms that way. simdjson parses the
text once and hands a flat array of numbers over as one buffer of doubles: 2.6 ms, the
same float32 values bit for bit. Everything but the ``data`` of float inputs becomes the
plain dicts and lists ``orjson`` would give, so the request is checked the same way.

Used for bodies from ``LARGE_BODY`` bytes up; small requests, where a Python object per
number costs nothing worth saving, keep ``orjson``.

simdjson's DOM counts an array's elements in 24 bits: at 0xFFFFFF the count saturates, and
pysimdjson then writes past the buffers it sized by it (a heap corruption that kills the
server). So no body it parses may hold an array of more than ``MAX_VALUES`` (0xFFFFFF - 1)
elements. ``n`` elements take at least ``2n + 1`` bytes (``[1,1,...]``): a body of at most
``2 * MAX_VALUES + 2`` bytes cannot hold more; a larger one is refused unparsed when it has
``MAX_VALUES`` commas or more (an array of ``n`` elements has ``n - 1``). The cap holds
whichever parser reads the body, so that a JSON request carries at most ``MAX_VALUES``
values in one array: larger tensors belong in the binary extension.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import orjson

from modelport.errors import InvalidInput, PayloadTooLarge

__all__ = [
    "LARGE_BODY",
    "MAX_VALUES",
    "available",
    "json_object",
    "request_body",
    "request_document",
]

LARGE_BODY = 64 * 1024
MAX_VALUES = 0xFFFFFF - 1
"""The most elements a JSON array in a request may hold: below simdjson's saturated count."""
_UNCOUNTED = 2 * MAX_VALUES + 2  # bodies up to this size cannot hold a longer array
_REUSED_UP_TO = 4 * 2**20  # each thread's parser takes bodies up to this size
_FLOAT_TYPES = frozenset({"FP16", "FP32", "FP64"})
_local = threading.local()

try:
    import simdjson

    _AVAILABLE = True
except ImportError:  # a speed-up only: without it every body goes through orjson
    _AVAILABLE = False


def available() -> bool:
    """Whether simdjson is installed."""
    return _AVAILABLE


def request_body(body: bytes) -> dict[str, Any]:
    """A V2 request body as a dict: ``request_document`` from ``LARGE_BODY`` bytes up (with
    simdjson installed), ``json_object`` below.

    Raises:
        InvalidInput: the body is not JSON, or not a JSON object.
        PayloadTooLarge: the body may hold an array of more than ``MAX_VALUES`` elements.
    """
    if len(body) < LARGE_BODY:  # the hot path: too small to hold a long array
        return json_object(body)
    if _AVAILABLE:
        return request_document(body)
    _check_countable(body)
    return json_object(body)


def request_document(body: bytes) -> dict[str, Any]:
    """A V2 request body parsed by simdjson; float inputs' flat ``data`` come as float64
    numpy arrays (which ``tensorio.array_from_json`` takes).

    Raises:
        InvalidInput: the body is not JSON, or not a JSON object.
        PayloadTooLarge: the body may hold an array of more than ``MAX_VALUES`` elements.
    """
    _check_countable(body)
    try:
        root = _parse(body)
    except (ValueError, RuntimeError) as exc:  # RuntimeError: nested past simdjson's depth
        raise InvalidInput(f"request body is not valid JSON: {exc}") from None
    if not isinstance(root, simdjson.Object):
        raise InvalidInput("request body must be a JSON object")
    document = {key: _plain(root[key]) for key in root if key != "inputs"}
    if "inputs" in root:
        document["inputs"] = _inputs(root["inputs"])
    return document


def _check_countable(body: bytes) -> None:
    """Refuse, unparsed, a body that may hold an array of more than ``MAX_VALUES`` elements."""
    if len(body) > _UNCOUNTED:
        commas = body.count(b",")
        if commas >= MAX_VALUES:
            raise PayloadTooLarge(
                f"a JSON request may hold at most {MAX_VALUES} values in one array and this "
                f"body has {commas} commas; send large tensors as binary data (the binary "
                "tensor data extension, or gRPC)"
            )


def json_object(body: bytes | memoryview, example: str = "") -> dict[str, Any]:
    """``body`` parsed by orjson: a JSON object, else ``InvalidInput`` (which shows
    ``example``, e.g. ``{"instances": [...]}``, when given)."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidInput(f"request body must be a JSON object{': ' + example if example else ''}")
    return document


def _parse(text: bytes) -> Any:
    if len(text) > _REUSED_UP_TO:
        # A parser keeps the buffers of the largest document it has parsed, for as long as
        # it lives (3 per 64 MiB body: RSS stayed 128 MiB up). One for a large body is used
        # once and dropped with the document; a fresh parser costs nothing below a few MiB
        # and ~30% of the parse above (11 MiB: 18.6 ms instead of 13.9 ms).
        return simdjson.Parser().parse(text)
    parser = getattr(_local, "parser", None)
    if parser is None:
        parser = _local.parser = simdjson.Parser()
    try:
        return parser.parse(text)
    except RuntimeError:
        # A proxy of the previous document is still alive (an exception's traceback can
        # hold one): that parser cannot be reused, so this thread gets a new one. A body
        # nested too deep raises RuntimeError too, and again from the new parser.
        parser = _local.parser = simdjson.Parser()
        return parser.parse(text)


def _inputs(items: Any) -> Any:
    if not isinstance(items, simdjson.Array):
        return _plain(items)
    return [_input(item) for item in items]


def _input(item: Any) -> Any:
    if not isinstance(item, simdjson.Object):
        return _plain(item)
    converted = {key: _plain(item[key]) for key in item if key != "data"}
    if "data" in item:
        data = item["data"]
        numbers = _flat_numbers(data) if converted.get("datatype") in _FLOAT_TYPES else None
        converted["data"] = numbers if numbers is not None else _plain(data)
    return converted


def _flat_numbers(data: Any) -> Any:
    """A flat JSON array of numbers as float64, else None (nested, or anything else in it,
    goes the ordinary way and gets the ordinary checks)."""
    if not isinstance(data, simdjson.Array) or len(data) == 0:
        return None
    if len(data) > MAX_VALUES:  # a saturated count, which the size rule above rules out
        raise PayloadTooLarge(f"a JSON array of more than {MAX_VALUES} values is too long")
    first = data[0]
    if isinstance(first, bool) or not isinstance(first, (int, float)):
        return None
    try:
        # as_buffer refuses true, false, null and strings (TypeError): only numbers pass.
        numbers = np.frombuffer(data.as_buffer(of_type="d"), dtype=np.float64)
    except (TypeError, ValueError):
        return None  # a string, bool or null somewhere in it
    # as_buffer flattens nested arrays: a count that differs from the length says some
    # element was an array, which the ordinary conversion judges.
    return numbers if numbers.size == len(data) else None


def _plain(value: Any) -> Any:
    if isinstance(value, simdjson.Object):
        return value.as_dict()
    if isinstance(value, simdjson.Array):
        return value.as_list()
    return value
