from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from modelport import DataType, InvalidInput, Signature, TensorSpec
from modelport.tensorio import array_from_json, read_tensors, tensors_from_json, tensors_to_json

SIG = Signature(
    inputs=(TensorSpec("x", DataType.FP32, (-1, 2)), TensorSpec("n", DataType.UINT8, (-1,))),
    outputs=(),
)


@pytest.mark.parametrize("datatype", [d for d in DataType if d is not DataType.BYTES])
def test_json_numbers_become_the_declared_datatype(datatype: DataType) -> None:
    value = [[1, 0], [0, 1]]
    array = array_from_json(value, datatype, "t")
    assert array.dtype == datatype.numpy
    assert array.tolist() == (
        [[True, False], [False, True]] if datatype is DataType.BOOL else value
    )


def test_bytes_from_strings() -> None:
    array = array_from_json([["héllo", "b"]], DataType.BYTES, "t")
    assert array.dtype == object
    assert array.tolist() == [["héllo".encode(), b"b"]]


@pytest.mark.parametrize(
    ("value", "datatype", "message"),
    [
        ([["a", 1]], DataType.FP32, "non-numeric JSON"),
        ([[1, 2], [3]], DataType.FP32, "ragged"),
        ([1.5], DataType.INT64, "whole numbers"),
        ([300], DataType.UINT8, r"outside the range of UINT8 \[0, 255\]"),
        ([-1], DataType.UINT32, "outside the range"),
        ([2], DataType.BOOL, "true/false"),
        ([None], DataType.FP32, "non-numeric"),
        ([{"a": 1}], DataType.FP32, "non-numeric"),
        ([1], DataType.BYTES, "must be strings"),
        # Each of these was once taken, changed, on some edge (issue 9).
        ([1.5, 2, 3, 4], DataType.INT32, "whole numbers"),
        (["7"], DataType.FP32, r"non-numeric JSON \(the string '7'\)"),
        ([True, 2.0], DataType.FP32, r"non-numeric JSON \(true\)"),
        ([[1.0, False]], DataType.FP64, r"non-numeric JSON \(false\)"),
        ([True], DataType.INT32, r"non-numeric JSON \(true\)"),
        ([1.0, None], DataType.FP32, r"non-numeric JSON \(null\)"),
        (["nan"], DataType.FP32, r"non-numeric JSON \(the string 'nan'\)"),
        ([1e39], DataType.FP32, r"outside the range of FP32"),
        ([float("nan"), 1e39], DataType.FP32, "outside the range of FP32"),  # NaN from --input
        ([1.0, float("nan"), -1e39], DataType.FP32, "outside the range of FP32"),
        ([1.0] * 100 + [1e39], DataType.FP32, "outside the range of FP32"),
        ([70000], DataType.FP16, r"outside the range of FP16 \[-65504, 65504\]"),
        ([10**400], DataType.FP64, "outside the range of FP64"),
        ([2**63, 1.0], DataType.INT64, "outside the range of INT64"),
        ([1, [2]], DataType.FP32, "ragged"),
        ([[1], 2], DataType.FP32, "ragged"),
        ([1.5], DataType.BOOL, "true/false"),
    ],
)
def test_json_values_that_would_change_are_refused(
    value: object, datatype: DataType, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        array_from_json(value, datatype, "t")


@pytest.mark.parametrize(
    ("value", "datatype", "expected"),
    [
        ([1.0, -2], DataType.INT32, [1, -2]),  # whole floats for integers
        ([[1, 2.5]], DataType.FP32, [[1.0, 2.5]]),  # integers for floats
        ([2**64 - 1], DataType.UINT64, [2**64 - 1]),
        ([2**63 - 1, 1.0], DataType.INT64, [2**63 - 1, 1]),  # exact past 2**53
        ([1, 0, True], DataType.BOOL, [True, False, True]),
        ([[], []], DataType.FP32, [[], []]),
        (3.5, DataType.FP32, 3.5),
        ([1e300], DataType.FP64, [1e300]),
    ],
)
def test_json_values_that_keep_their_value_are_taken(
    value: object, datatype: DataType, expected: object
) -> None:
    array = array_from_json(value, datatype, "t")
    assert array.dtype == datatype.numpy
    assert array.tolist() == expected


def test_a_float64_buffer_is_narrowed_with_the_same_rule() -> None:
    # What v2_json hands over for a large body's flat float data.
    buffer = np.array([1.5, -2.25, 3.0])
    assert array_from_json(buffer, DataType.FP32, "t").tolist() == [1.5, -2.25, 3.0]
    assert array_from_json(buffer, DataType.FP32, "t").dtype == np.float32
    big = np.full(10_000, 1.0)
    big[5_000] = 1e39
    with pytest.raises(InvalidInput, match="outside the range of FP32"):
        array_from_json(big, DataType.FP32, "t")
    with pytest.raises(InvalidInput, match="whole numbers"):  # not a float datatype
        array_from_json(buffer, DataType.INT8, "t")


def test_nan_passes_through_to_the_model() -> None:
    array = array_from_json([float("nan")], DataType.FP32, "t")
    assert np.isnan(array[0])


def test_tensors_from_json_checks_names_and_shape_of_document() -> None:
    tensors = tensors_from_json({"x": [[1, 2]], "n": [3]}, SIG)
    assert tensors["x"].dtype == np.float32
    with pytest.raises(InvalidInput, match="unknown input 'y'"):
        tensors_from_json({"y": [1]}, SIG)
    with pytest.raises(InvalidInput, match="must be an object"):
        tensors_from_json([[1, 2]], SIG)


def test_read_tensors_from_every_source(tmp_path: Path) -> None:
    x = np.array([[1.5, 2.5]], np.float32)
    n = np.array([7], np.uint8)
    np.savez(tmp_path / "in.npz", x=x, n=n)
    (tmp_path / "in.json").write_text(json.dumps({"x": x.tolist(), "n": n.tolist()}))
    for source in (
        '{"x": [[1.5, 2.5]], "n": [7]}',
        str(tmp_path / "in.npz"),
        str(tmp_path / "in.json"),
    ):
        tensors = read_tensors(source, SIG)
        np.testing.assert_array_equal(tensors["x"], x)
        np.testing.assert_array_equal(tensors["n"], n)

    single = Signature((TensorSpec("x", DataType.FP32, (-1, 2)),), ())
    np.save(tmp_path / "x.npy", x)
    np.testing.assert_array_equal(read_tensors(str(tmp_path / "x.npy"), single)["x"], x)
    with pytest.raises(InvalidInput, match=r"takes 2 inputs \(x, n\); use a .npz"):
        read_tensors(str(tmp_path / "x.npy"), SIG)


def test_read_tensors_refuses_bad_sources(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="invalid JSON"):
        read_tensors('{"x": [1,', SIG)
    with pytest.raises(InvalidInput, match="neither JSON nor an existing"):
        read_tensors(str(tmp_path / "missing.npz"), SIG)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(InvalidInput, match="cannot read tensors"):
        read_tensors(str(tmp_path / "bad.npz"), SIG)
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    single = Signature((TensorSpec("x", DataType.FP32, (-1, 2)),), ())
    with pytest.raises(InvalidInput, match="cannot read tensors"):
        read_tensors(str(tmp_path / "objects.npy"), single)
    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(InvalidInput, match="unknown input file type"):
        read_tensors(str(tmp_path / "x.csv"), SIG)


def test_tensors_to_json_decodes_bytes() -> None:
    out = tensors_to_json(
        {"label": np.array([b"setosa", b"\xff"], dtype=object), "p": np.array([0.5], np.float32)}
    )
    assert out == {"label": ["setosa", "\\xff"], "p": [0.5]}
