"""Translating tensors to and from JSON values and .npy/.npz/.json files.

JSON carries no dtype, so JSON data is converted to the datatype the signature declares,
refusing what would silently change a value (1.5 as an integer, 300 as UINT8, "a" as FP32).
Files with a dtype of their own keep it, and the signature check judges it.
"""

from __future__ import annotations

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
    "array_from_json",
    "read_signature",
    "read_tensors",
    "read_untyped_tensors",
    "tensors_from_json",
    "tensors_to_json",
    "write_npz",
]


def array_from_json(value: Any, datatype: DataType, name: str) -> npt.NDArray[Any]:
    """A numpy array of ``datatype`` from a (nested) JSON list or scalar."""
    if datatype is DataType.BYTES:
        try:
            array = np.array(value, dtype=object)
        except ValueError as exc:
            raise InvalidInput(f"input {name!r}: nested lists are ragged ({exc})") from None
        return np.vectorize(_to_bytes, otypes=[object])(array) if array.size else array
    try:
        array = np.asarray(value)
    except ValueError:
        raise InvalidInput(
            f"input {name!r}: nested lists are ragged; every row must have the same length"
        ) from None
    if array.size == 0:
        return array.astype(datatype.numpy)
    if array.dtype.kind not in "biuf":
        raise InvalidInput(
            f"input {name!r}: expected numbers for datatype {datatype.value}, "
            "received non-numeric JSON"
        )
    target = datatype.numpy
    if datatype is DataType.BOOL:
        if array.dtype.kind != "b" and not np.isin(array, (0, 1)).all():
            raise InvalidInput(f"input {name!r}: expected true/false for BOOL")
        return array.astype(np.bool_)
    if target.kind in "iu":
        if array.dtype.kind == "f" and not np.all(np.isfinite(array) & (array == np.round(array))):
            raise InvalidInput(
                f"input {name!r}: expected whole numbers for datatype {datatype.value}"
            )
        info = np.iinfo(target)
        if array.min() < info.min or array.max() > info.max:
            raise InvalidInput(
                f"input {name!r}: values outside the range of {datatype.value} "
                f"[{info.min}, {info.max}]"
            )
    return array.astype(target)


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
