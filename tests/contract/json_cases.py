"""The one case table of the JSON typing rule (``tensorio.array_from_json``).

JSON carries no dtype: every edge that takes JSON (V2 REST, TF Serving REST, ``predict
--input``, the ``Client``) types it by the signature's datatype, and refuses what the
conversion would change. Each case is a value sent as input ``x`` of an identity model of
``datatype`` (shape [-1, -1]), and either the array that comes back or the words of the
refusal (InvalidInput: 400 / INVALID_ARGUMENT / exit 2). ``test_json_edges`` runs every case
over every edge; a client's own tests can import ``CASES`` as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from modelport.types import DataType


@dataclass(frozen=True)
class JsonCase:
    """``value`` (JSON-ready) sent as a ``datatype`` tensor: ``expected`` comes back, or,
    when ``expected`` is None, the request is refused with a message holding ``refused``."""

    id: str
    datatype: DataType
    value: Any
    expected: npt.NDArray[Any] | None = None
    refused: str = ""

    def __post_init__(self) -> None:
        assert (self.expected is None) != (not self.refused), self.id


def _ok(id: str, datatype: DataType, value: Any, expected: Any = None) -> JsonCase:
    source = value if expected is None else expected
    if datatype is DataType.BYTES:
        array = np.empty(np.shape(source), dtype=object)
        array[...] = [
            [item.encode() if isinstance(item, str) else item for item in row] for row in source
        ]
    else:
        array = np.array(source, dtype=datatype.numpy)
    return JsonCase(id, datatype, value, expected=array)


def _no(id: str, datatype: DataType, value: Any, refused: str) -> JsonCase:
    return JsonCase(id, datatype, value, refused=refused)


NOT_A_NUMBER = "received non-numeric JSON"
NOT_WHOLE = "expected whole numbers"
OUT_OF_RANGE = "values outside the range of"
RAGGED = "nested lists are ragged"
NOT_BOOL = "expected true/false for BOOL"
NOT_TEXT = "BYTES data must be strings"

F = DataType

CASES: list[JsonCase] = [
    _ok("fp32-numbers", F.FP32, [[1.5, 2, -0.25]]),
    _ok("fp32-rounds-to-precision", F.FP32, [[0.1]]),
    _no("fp32-overflow", F.FP32, [[1e39]], OUT_OF_RANGE),
    _no("fp32-string-number", F.FP32, [["7"]], NOT_A_NUMBER),
    _no("fp32-true", F.FP32, [[True]], NOT_A_NUMBER),
    _no("fp32-null", F.FP32, [[None]], NOT_A_NUMBER),
    _no("fp32-nan-string", F.FP32, [["nan"]], NOT_A_NUMBER),
    _no("fp32-depth-mismatch", F.FP32, [[1.0], [[2.0]]], RAGGED),
    _ok("fp16-in-range", F.FP16, [[1.5, -65504]]),
    _no("fp16-overflow", F.FP16, [[70000]], OUT_OF_RANGE),
    _ok("int32-whole", F.INT32, [[7, -3]]),
    _ok("int32-whole-float", F.INT32, [[2.0]], [[2]]),
    _no("int32-fraction", F.INT32, [[1.5]], NOT_WHOLE),
    _no("int32-string-number", F.INT32, [["7"]], NOT_A_NUMBER),
    _no("int32-true", F.INT32, [[True]], NOT_A_NUMBER),
    _no("int32-overflow", F.INT32, [[2**31]], OUT_OF_RANGE),
    _no("int32-ragged-rows", F.INT32, [[1, 2], [3]], RAGGED),
    _ok("int8-limits", F.INT8, [[-128, 127]]),
    _no("int8-200", F.INT8, [[200]], OUT_OF_RANGE),
    _ok("int64-limits", F.INT64, [[2**63 - 1, -(2**63)]]),
    _no("int64-2**63", F.INT64, [[2**63]], OUT_OF_RANGE),
    _ok("uint8-limits", F.UINT8, [[0, 255]]),
    _no("uint8-300", F.UINT8, [[300]], OUT_OF_RANGE),
    _no("uint32-negative", F.UINT32, [[-1]], OUT_OF_RANGE),
    _ok("uint32-max", F.UINT32, [[2**32 - 1]]),
    _ok("bool-true-false", F.BOOL, [[True, False]]),
    _ok("bool-from-0-1", F.BOOL, [[0, 1]], [[False, True]]),
    _no("bool-2", F.BOOL, [[2]], NOT_BOOL),
    _no("bool-string", F.BOOL, [["true"]], NOT_BOOL),
    _ok("bytes-from-str", F.BYTES, [["a", "héllo"]]),
    _no("bytes-number", F.BYTES, [[1]], NOT_TEXT),
    _no("bytes-null", F.BYTES, [[None]], NOT_TEXT),
]

DATATYPES: list[DataType] = sorted({case.datatype for case in CASES}, key=lambda d: d.value)


def model_name(datatype: DataType) -> str:
    """The identity model that serves ``datatype`` in the contract tests."""
    return f"identity-{datatype.value.lower()}"
