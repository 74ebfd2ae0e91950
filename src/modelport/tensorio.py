"""Translating tensors to and from JSON values and .npy/.npz/.json files.

JSON carries no dtype, so JSON data is converted to the datatype the signature declares,
refusing what would silently change a value (1.5 as an integer, 300 as UINT8, "7", null or
true as FP32): ``array_from_json`` is that rule for every edge that takes JSON. Files with a
dtype of their own keep it, and the signature check judges it.
"""

from __future__ import annotations

import itertools
import json
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from modelport.errors import InvalidInput
from modelport.types import DataType, Signature, Tensors

__all__ = [
    "MAX_RANK",
    "array_from_json",
    "read_signature",
    "read_tensors",
    "read_untyped_tensors",
    "tensors_from_json",
    "tensors_to_json",
    "write_npz",
]


def array_from_json(value: Any, datatype: DataType, name: str) -> npt.NDArray[Any]:
    """A numpy array of ``datatype`` from a (nested) JSON list or scalar.

    The one rule that types JSON on every edge (V2 REST, TF Serving REST, ``predict
    --input``): a value the conversion would change is refused, never coerced. Numeric
    datatypes take numbers (whole and in range for integers, in range for FP16/FP32); BOOL
    takes true/false (or 0/1); BYTES takes strings (or bytes a caller decoded, e.g. base64).
    A string, null or true/false where a number belongs is refused, as are 1.5 for an
    integer, 300 for UINT8 and 1e39 for FP32. Floats round to the datatype's precision.

    ``value`` may also be a float64 numpy array: what ``v2_json`` makes of a flat list of
    JSON numbers, already known to hold nothing else.

    Raises:
        InvalidInput: naming the input and what was wrong with the value.
    """
    if type(value) is list and 0 < len(value) <= 64 and datatype in _FLOAT_MAX:
        # A few flat numbers (a tabular row), the commonest request: the whole rule in one
        # pass (no bool, null or string; every value within range), else the general path.
        # Python's min and max are sound with NaN: it fails the test or is skipped.
        limit = _FLOAT_MAX[datatype]
        if set(map(type, value)) <= _NUMBERS and -limit <= min(value) and max(value) <= limit:
            return np.fromiter(value, datatype.numpy, count=len(value))
    if isinstance(value, np.ndarray):
        if value.dtype == np.float64 and datatype in _FLOAT_MAX:
            return _narrow(value, datatype, name)
        value = value.tolist()
    leaves, shape, types = _flatten(value, name)
    array: npt.NDArray[Any]
    if datatype in _FLOAT_MAX and types <= _NUMBERS:  # the usual case first
        array = _floats(leaves, datatype, name)
    elif datatype is DataType.BYTES:
        array = _bytes_array(leaves, types, name)
    elif datatype is DataType.BOOL:
        array = _bool_array(leaves, types, name)
    elif not types <= _NUMBERS:
        received = _describe(next(v for v in leaves if type(v) not in _NUMBERS))
        raise InvalidInput(
            f"input {name!r}: expected numbers for datatype {datatype.value}, "
            f"received non-numeric JSON ({received})"
        )
    else:
        array = _integers(leaves, types, datatype, name)
    return array if len(shape) == 1 else array.reshape(shape)


MAX_RANK = 32
"""The most dimensions a tensor from the wire may have (numpy's own limit is 64)."""

# ``type(v) in _NUMBERS``, not ``isinstance``: True and False are ints to Python, not to JSON.
_NUMBERS = frozenset({int, float})
# The largest finite value of each float datatype.
_FLOAT_MAX = {
    DataType.FP16: 65504.0,
    DataType.FP32: 3.4028234663852886e38,
    DataType.FP64: 1.7976931348623157e308,
}


def _flatten(value: Any, name: str) -> tuple[list[Any], tuple[int, ...], set[type]]:
    """The leaves of a (nested) list in row-major order, its shape and the leaves' types.

    One ``map(type)`` per nesting level, in C: on a flat list of 150k floats it costs less
    than numpy's own conversion, and it is what tells a JSON ``true`` from a 1.
    """
    if type(value) is not list:
        return [value], (), {type(value)}
    shape = [len(value)]
    level: list[Any] = value
    while True:
        kinds = list(map(type, level))
        # Uniform levels (the usual case) are told by one identity-compared count.
        types = {kinds[0]} if kinds and kinds.count(kinds[0]) == len(kinds) else set(kinds)
        if list not in types:
            return level, tuple(shape), types
        lengths = set(map(len, level)) if types == {list} else None
        if lengths is None or len(lengths) != 1:
            raise InvalidInput(
                f"input {name!r}: nested lists are ragged; every row must have the same length"
            )
        if len(shape) == MAX_RANK:
            raise InvalidInput(f"input {name!r}: lists nested deeper than {MAX_RANK} levels")
        shape.append(lengths.pop())
        level = list(itertools.chain.from_iterable(level))


def _floats(leaves: list[Any], datatype: DataType, name: str) -> npt.NDArray[Any]:
    """JSON numbers as FP16/FP32/FP64, refusing values past the datatype's range."""
    if 0 < len(leaves) <= 64 and datatype is not DataType.FP64:
        # A few numbers (an iris row) are range-checked by Python's min and max, in less
        # time than numpy takes to start. Sound with NaN too: max() keeps a leading NaN
        # (and then fails the test) and otherwise skips it.
        limit = _FLOAT_MAX[datatype]
        if -limit <= min(leaves) and max(leaves) <= limit:
            return np.fromiter(leaves, datatype.numpy, count=len(leaves))
    return _narrow(_float64(leaves, datatype, name), datatype, name)


def _float64(leaves: list[Any], datatype: DataType, name: str) -> npt.NDArray[np.float64]:
    try:
        return np.fromiter(leaves, np.float64, count=len(leaves))
    except OverflowError:  # an integer past float64's range
        raise _out_of_range(name, datatype) from None


def _narrow(array: npt.NDArray[np.float64], datatype: DataType, name: str) -> npt.NDArray[Any]:
    """``array`` as FP16/FP32/FP64, refusing values past the datatype's range (not inf)."""
    if datatype is DataType.FP64:
        return array  # JSON numbers are float64 already
    limit = _FLOAT_MAX[datatype]
    if array.size < 4096:
        # When the sum of squares is within limit², so is every element: one BLAS call,
        # cheaper than two reductions on a small array. On a large one OpenBLAS wakes its
        # threads, which costs more than it saves on a busy machine.
        within = array.dot(array) <= limit * limit
    else:
        within = -limit <= array.min() and array.max() <= limit
    if within:
        return array.astype(datatype.numpy)
    with np.errstate(over="ignore"):  # an overflow is what is looked for next
        narrowed = array.astype(datatype.numpy)
    if (np.isinf(narrowed) & np.isfinite(array)).any():
        raise _out_of_range(name, datatype)
    return narrowed  # NaN and inf (which --input JSON may hold) pass through


def _integers(
    leaves: list[Any], types: set[type], datatype: DataType, name: str
) -> npt.NDArray[Any]:
    if float in types:
        floats = _float64(leaves, datatype, name)
        if not (np.isfinite(floats) & (floats == np.trunc(floats))).all():
            raise InvalidInput(
                f"input {name!r}: expected whole numbers for datatype {datatype.value}"
            )
        leaves = list(map(int, leaves))  # exact, where float64 is not past 2**53
    try:
        return np.fromiter(leaves, datatype.numpy, count=len(leaves))
    except OverflowError:
        raise _out_of_range(name, datatype) from None


def _out_of_range(name: str, datatype: DataType) -> InvalidInput:
    target = datatype.numpy
    if target.kind == "f":
        bound = f"{float(np.finfo(target).max):g}"
        return InvalidInput(
            f"input {name!r}: values outside the range of {datatype.value} [-{bound}, {bound}]"
        )
    info = np.iinfo(target)
    return InvalidInput(
        f"input {name!r}: values outside the range of {datatype.value} [{info.min}, {info.max}]"
    )


def _bool_array(leaves: list[Any], types: set[type], name: str) -> npt.NDArray[np.bool_]:
    if types == {bool} or not leaves:
        return np.fromiter(leaves, np.bool_, count=len(leaves))
    if types <= {bool, *_NUMBERS}:
        try:
            values = np.fromiter(leaves, np.float64, count=len(leaves))
        except OverflowError:
            values = np.array([2.0])  # a huge integer: not 0 or 1 either
        if np.isin(values, (0, 1)).all():
            return values.astype(np.bool_)
    raise InvalidInput(f"input {name!r}: expected true/false for BOOL")


def _bytes_array(leaves: list[Any], types: set[type], name: str) -> npt.NDArray[np.object_]:
    if not types <= {str, bytes}:
        wrong = _describe(next(v for v in leaves if type(v) not in (str, bytes)))
        raise InvalidInput(f"input {name!r}: BYTES data must be strings, received {wrong}")
    array = np.empty(len(leaves), dtype=object)
    # Assigned, not passed to np.array, which would make fixed-width strings of them.
    array[:] = [v.encode() if type(v) is str else v for v in leaves]
    return array


def _describe(value: Any) -> str:
    """A JSON value as a message names it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = value if len(value) <= 20 else value[:20] + "..."
        return f"the string {text!r}"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _to_bytes(item: Any) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode()
    raise InvalidInput(f"BYTES data must be strings, received {type(item).__name__}")


def tensors_from_json(data: Any, signature: Signature) -> Tensors:
    """Tensors from ``{"input_name": nested_list, ...}``, typed by ``signature``."""
    if not isinstance(data, Mapping):
        raise InvalidInput(
            "input JSON must be an object mapping input names to values, "
            f'e.g. {{"{_first_input(signature)}": [[...]]}}'
        )
    return {
        name: array_from_json(value, signature.input(name).datatype, name)
        for name, value in data.items()
    }


def _first_input(signature: Signature) -> str:
    return signature.inputs[0].name if signature.inputs else "input"


def read_tensors(source: str, signature: Signature) -> Tensors:
    """Tensors from a JSON string, or a path to a .json, .npy or .npz file."""
    path = Path(source)
    if source.lstrip().startswith(("{", "[")):
        return tensors_from_json(_parse_json(source, "--input"), signature)
    if not path.is_file():
        raise InvalidInput(f"{source!r} is neither JSON nor an existing .json/.npy/.npz file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            return tensors_from_json(_parse_json(path.read_text(), str(path)), signature)
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                return {name: archive[name] for name in archive.files}
        if suffix == ".npy":
            if len(signature.inputs) != 1:
                names = ", ".join(s.name for s in signature.inputs)
                raise InvalidInput(
                    f"a .npy file holds one array but the model takes {len(signature.inputs)} "
                    f"inputs ({names}); use a .npz file with one array per input name"
                )
            return {signature.inputs[0].name: np.load(path, allow_pickle=False)}
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise InvalidInput(f"cannot read tensors from {path}: {exc}") from None
    raise InvalidInput(f"{path}: unknown input file type {suffix!r}; use .json, .npy or .npz")


def _parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{where}: invalid JSON ({exc})") from None


def tensors_to_json(tensors: Tensors) -> dict[str, Any]:
    """JSON-ready nested lists; BYTES become text where they decode as UTF-8."""
    result: dict[str, Any] = {}
    for name, array in tensors.items():
        if array.dtype.kind in "OS":
            result[name] = np.vectorize(_to_text, otypes=[object])(array).tolist()
        else:
            result[name] = array.tolist()
    return result


def _to_text(item: Any) -> Any:
    if isinstance(item, bytes):
        return item.decode("utf-8", errors="backslashreplace")
    return item


def write_npz(path: Path, tensors: Tensors) -> None:
    """Save ``tensors`` as ``.npz`` without pickle: BYTES (object) arrays become fixed-width
    bytes (``S``), which numpy reads back without pickle (trailing NUL bytes are lost)."""
    import numpy as np

    arrays = {
        name: np.array([_to_bytes(item) for item in array.ravel()], dtype="S").reshape(array.shape)
        if array.dtype == object
        else array
        for name, array in tensors.items()
    }
    np.savez(path, allow_pickle=False, **arrays)


def read_signature(path: Path) -> Signature:
    """A signature from a JSON file.

    The file reads ``{"inputs": [{"name", "datatype", "shape"}], "outputs": [...]}``.
    """
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{path}: invalid JSON ({exc})") from None
    if not isinstance(data, dict) or not data.get("inputs"):
        raise InvalidInput(f'{path}: expected {{"inputs": [...], "outputs": [...]}}')
    try:
        return Signature.from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInput(
            f"{path}: each tensor needs a name, a datatype and a shape ({exc})"
        ) from None


def read_untyped_tensors(path: Path) -> Tensors:
    """Example tensors from a .npz (one array per input), .npy (one input) or .json file.

    With no signature to type them, arrays keep the dtype the file gives; JSON numbers
    become float32 and whole numbers int64, as a framework would read them.
    """
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                return {name: archive[name] for name in archive.files}
        if suffix == ".npy":
            return {"input": np.load(path, allow_pickle=False)}
        if suffix == ".json":
            data = _parse_json(path.read_text(), str(path))
            if not isinstance(data, Mapping):
                raise InvalidInput(f"{path}: expected an object of input name -> values")
            return {name: _untyped(name, value) for name, value in data.items()}
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise InvalidInput(f"cannot read tensors from {path}: {exc}") from None
    raise InvalidInput(f"{path}: unknown example file type {suffix!r}; use .npz, .npy or .json")


def _untyped(name: str, value: Any) -> npt.NDArray[Any]:
    array = np.asarray(value)
    if array.dtype.kind == "f":
        return array.astype(np.float32)
    if array.dtype.kind in "iub":
        return array.astype(np.int64) if array.dtype.kind != "b" else array
    if array.dtype.kind == "U":
        return array.astype(object)
    raise InvalidInput(f"example input {name!r} is not numbers or strings")
