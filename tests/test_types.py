from __future__ import annotations

import numpy as np
import pytest

from modelport import DataType, InvalidInput, InvalidName, ModelRef, Signature, TensorSpec
from modelport.types import parse_tags, validate_alias, validate_name


def test_every_datatype_round_trips_through_numpy() -> None:
    for datatype in DataType:
        if datatype is DataType.BYTES:
            continue
        assert DataType.from_numpy(datatype.numpy) is datatype
        assert datatype.itemsize == datatype.numpy.itemsize
    assert DataType.from_numpy(np.dtype(object)) is DataType.BYTES
    assert DataType.from_numpy(np.dtype("S5")) is DataType.BYTES
    assert DataType.BYTES.itemsize == 0


def test_unknown_datatype_name_lists_the_valid_ones() -> None:
    with pytest.raises(InvalidInput, match=r"unknown datatype 'FLOAT32'.*FP32"):
        DataType.parse("FLOAT32")
    with pytest.raises(InvalidInput, match="complex64"):
        DataType.from_numpy(np.complex64)


SIG = Signature(
    inputs=(
        TensorSpec("x", DataType.FP32, (-1, 4)),
        TensorSpec("mask", DataType.BOOL, (-1,)),
    ),
    outputs=(TensorSpec("y", DataType.INT64, (-1,)),),
)


def test_validate_accepts_dynamic_dimensions() -> None:
    SIG.validate({"x": np.zeros((7, 4), np.float32), "mask": np.ones(7, bool)})


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ({"x": np.zeros((1, 4), np.float32)}, r"missing input 'mask' \(BOOL \[-1\]\)"),
        (
            {"x": np.zeros((1, 4), np.float64), "mask": np.ones(1, bool)},
            "input 'x': expected datatype FP32, received FP64",
        ),
        (
            {"x": np.zeros((1, 5), np.float32), "mask": np.ones(1, bool)},
            r"input 'x': expected shape \[-1, 4\], received \[1, 5\]",
        ),
        (
            {"x": np.zeros(4, np.float32), "mask": np.ones(1, bool)},
            r"input 'x': expected shape \[-1, 4\], received \[4\]",
        ),
        (
            {"x": np.zeros((1, 4), np.float32), "mask": np.ones(1, bool), "z": np.zeros(1)},
            "unknown input 'z'; the model takes 'x', 'mask'",
        ),
        (
            {"x": np.zeros((1, 4), np.complex64), "mask": np.ones(1, bool)},
            "received numpy complex64",
        ),
    ],
)
def test_validate_names_the_tensor_and_what_was_expected(
    tensors: dict[str, np.ndarray], message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        SIG.validate(tensors)


def test_bytes_inputs_accept_object_and_string_arrays() -> None:
    sig = Signature((TensorSpec("text", DataType.BYTES, (-1,)),), ())
    sig.validate({"text": np.array([b"a", b"bc"], dtype=object)})
    sig.validate({"text": np.array(["a", "bc"])})
    with pytest.raises(InvalidInput, match="expected datatype BYTES"):
        sig.validate({"text": np.zeros(2, np.float32)})


def test_unknown_rank_accepts_any_shape() -> None:
    sig = Signature((TensorSpec("x", DataType.FP32, None),), ())
    sig.validate({"x": np.zeros((2, 3, 4), np.float32)})


def test_signature_round_trips_through_dict() -> None:
    assert Signature.from_dict(SIG.to_dict()) == SIG
    assert SIG.output_names() == ["y"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("iris", ModelRef("iris")),
        ("iris@latest", ModelRef("iris")),
        ("iris@3", ModelRef("iris", version=3)),
        ("iris@production", ModelRef("iris", alias="production")),
        ("my-model.v2_x@prod-eu", ModelRef("my-model.v2_x", alias="prod-eu")),
    ],
)
def test_model_ref_parses(text: str, expected: ModelRef) -> None:
    assert ModelRef.parse(text) == expected
    assert ModelRef.parse(str(expected)) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("iris@", "nothing after '@'"),
        ("iris@0", "versions start at 1"),
        ("../etc@1", "path separator"),
        ("a..b", r"contains '\.\.'"),
        ("ir\tis", "control characters"),
        ("x" * 129, "129 characters long; the limit is 128"),
        ("", "empty"),
        ("-iris", "starting with a letter or digit"),
        ("iris@pro duction", "not allowed"),
        ("C:\\models", "path separator"),
        # str.isdigit() takes these, int() does not (or reads another number): a 500 once.
        ("iris@²", "not allowed"),
        ("iris@١", "not allowed"),
        ("iris@" + "9" * 19, "at most 18 digits"),
        ("iris@" + "9" * 5000, "at most 18 digits"),
    ],
)
def test_invalid_refs_say_why(text: str, message: str) -> None:
    with pytest.raises(InvalidName, match=message):
        ModelRef.parse(text)


def test_name_rules() -> None:
    assert validate_name("x" * 128) == "x" * 128
    with pytest.raises(InvalidName, match="version number"):
        validate_alias("42")
    with pytest.raises(InvalidName, match="reserved"):
        validate_alias("latest")


def test_parse_tags() -> None:
    assert parse_tags(["team=vision", "stage=a=b", "empty="]) == {
        "team": "vision",
        "stage": "a=b",
        "empty": "",
    }
    with pytest.raises(InvalidInput, match="key=value"):
        parse_tags(["novalue"])
    with pytest.raises(InvalidName, match="tag key"):
        parse_tags(["bad key=1"])
