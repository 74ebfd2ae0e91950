"""Every case of the JSON typing table over every edge that takes JSON, on one real server.

V2 REST (JSON ``data``), TF Serving REST (``inputs``), gRPC typed ``contents`` (where the
question arises: the value fits the field, and the field is wider than the datatype, as
``uint_contents`` is for UINT8) and ``modelport predict --input`` (the CLI's own entry point,
in-process: a subprocess per case would cost seconds each). Each edge must give the table's
array back, or refuse with the table's words and its status: the edges cannot drift apart.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import numpy.typing as npt
import pytest
from onnx import TensorProto, helper

from modelport import Registry, Settings
from modelport._generated import grpc_predict_v2_pb2 as pb
from modelport._generated import grpc_predict_v2_pb2_grpc as pb_grpc
from modelport.cli.main import run as cli
from modelport.types import DataType
from tests.contract.json_cases import CASES, DATATYPES, JsonCase, model_name
from tests.onnx_models import make_graph_model, tensor
from tests.serving_fixtures import Server, running_server

_ONNX_TYPES = {
    DataType.FP32: TensorProto.FLOAT,
    DataType.FP16: TensorProto.FLOAT16,
    DataType.INT8: TensorProto.INT8,
    DataType.INT32: TensorProto.INT32,
    DataType.INT64: TensorProto.INT64,
    DataType.UINT8: TensorProto.UINT8,
    DataType.UINT32: TensorProto.UINT32,
    DataType.BOOL: TensorProto.BOOL,
    DataType.BYTES: TensorProto.STRING,
}


@pytest.fixture(scope="module")
def contract_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry with an identity model (x -> y, [-1, -1]) per datatype of the table."""
    tmp = tmp_path_factory.mktemp("json-contract")
    home = tmp / "home"
    with Registry(Settings(home=home, db_url=None, store_path=None)) as registry:
        for datatype in DATATYPES:
            onnx_type = _ONNX_TYPES[datatype]
            path = make_graph_model(
                tmp / f"{model_name(datatype)}.onnx",
                [helper.make_node("Identity", ["x"], ["y"])],
                [tensor("x", onnx_type, ["batch", "n"])],
                [tensor("y", onnx_type, ["batch", "n"])],
            )
            registry.push(path, model_name(datatype))
    return home


@pytest.fixture(scope="module")
def server(contract_home: Path) -> Iterator[Server]:
    with running_server(contract_home, [model_name(d) for d in DATATYPES]) as running:
        yield running


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.http_url, timeout=30) as client:
        yield client


def _declared_shape(value: list[list[Any]]) -> list[int]:
    return [len(value), len(value[0])]


def _same(case: JsonCase, got: npt.NDArray[Any]) -> None:
    expected = case.expected
    assert expected is not None
    assert got.shape == expected.shape, case.id
    if case.datatype is DataType.BYTES:
        assert got.tolist() == expected.tolist(), case.id
    else:
        assert got.dtype == expected.dtype, case.id
        np.testing.assert_array_equal(got, expected)


def _from_json(case: JsonCase, value: Any) -> npt.NDArray[Any]:
    """A JSON answer as the table's array (BYTES come back as text)."""
    if case.datatype is DataType.BYTES:
        array = np.empty(np.shape(value), dtype=object)
        array[...] = [[item.encode() for item in row] for row in value]
        return array
    return np.array(value, dtype=case.datatype.numpy)


def _refused(case: JsonCase, status: int, body: dict[str, Any]) -> None:
    assert status == 400, (case.id, body)
    assert body["code"] == "invalid_input", case.id
    assert case.refused in body["error"], (case.id, body)


# A large body is parsed by another parser (simdjson, when installed, from v2_json's
# LARGE_BODY of 64 KiB up): the rule must not depend on which one read the values.
_PADDING = {"parameters": {"padding": "x" * 256 * 1024}}


@pytest.mark.parametrize("large", [False, True], ids=["small-body", "large-body"])
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_v2_rest(http: httpx.Client, case: JsonCase, large: bool) -> None:
    tensor_ = {
        "name": "x",
        "datatype": case.datatype.value,
        "shape": _declared_shape(case.value),
        "data": case.value,
    }
    body = {"inputs": [tensor_], **(_PADDING if large else {})}
    answer = http.post(f"/v2/models/{model_name(case.datatype)}/infer", json=body)
    if case.expected is None:
        _refused(case, answer.status_code, answer.json())
        return
    assert answer.status_code == 200, answer.text
    output = answer.json()["outputs"][0]
    assert output["datatype"] == case.datatype.value
    flat = _from_json(case, [output["data"]]).reshape(output["shape"])
    _same(case, flat)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_tf_serving_rest(http: httpx.Client, case: JsonCase) -> None:
    answer = http.post(
        f"/v1/models/{model_name(case.datatype)}:predict", json={"inputs": {"x": case.value}}
    )
    if case.expected is None:
        _refused(case, answer.status_code, answer.json())
        return
    assert answer.status_code == 200, answer.text
    _same(case, _from_json(case, answer.json()["outputs"]))


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_cli_predict_input(
    contract_home: Path,
    case: JsonCase,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("MODELPORT_HOME", str(contract_home))
    for variable in ("MODELPORT_DB_URL", "MODELPORT_STORE_PATH", "MODELPORT_STORE_URL"):
        monkeypatch.delenv(variable, raising=False)
    given = json.dumps({"x": case.value})
    with pytest.raises(SystemExit) as exited:
        cli(["predict", model_name(case.datatype), "--input", given])
    out, err = capsys.readouterr()
    if case.expected is None:
        assert exited.value.code == 2, (case.id, err)
        assert err.startswith("error: ") and case.refused in err, (case.id, err)
        return
    assert exited.value.code == 0, (case.id, err)
    _same(case, _from_json(case, json.loads(out)["y"]))


# -- gRPC typed contents: the cases the protocol lets a client send ------------------------

_FIELDS = {
    DataType.FP32: "fp32_contents",
    DataType.INT8: "int_contents",
    DataType.INT32: "int_contents",
    DataType.INT64: "int64_contents",
    DataType.UINT8: "uint_contents",
    DataType.UINT32: "uint_contents",
    DataType.BOOL: "bool_contents",
    DataType.BYTES: "bytes_contents",
}
_LEAF_TYPES: dict[str, tuple[type, ...]] = {
    "fp32_contents": (int, float),
    "int_contents": (int,),
    "int64_contents": (int,),
    "uint_contents": (int,),
    "bool_contents": (bool,),
    "bytes_contents": (str,),
}
_FP32_MAX = float(np.finfo(np.float32).max)


def _contents(case: JsonCase) -> pb.InferTensorContents | None:
    """The case as typed contents; None where the question cannot arise over gRPC: no field
    for the datatype, ragged rows (a message has one flat list and a shape), values of
    another kind than the field's, or ones protobuf itself refuses or would change."""
    field = _FIELDS.get(case.datatype)
    rows = case.value
    if field is None or len({len(row) if isinstance(row, list) else -1 for row in rows}) != 1:
        return None
    leaves = [leaf for row in rows for leaf in row]
    if any(isinstance(leaf, list) for leaf in leaves):
        return None
    kinds = _LEAF_TYPES[field]
    if not all(type(leaf) in kinds for leaf in leaves):
        return None
    if field == "fp32_contents" and any(abs(leaf) > _FP32_MAX for leaf in leaves):
        return None  # protobuf would store inf: the client cannot send 1e39
    if field == "bytes_contents":
        leaves = [leaf.encode() for leaf in leaves]
    try:
        return pb.InferTensorContents(**{field: leaves})
    except (TypeError, ValueError):  # e.g. -1 in uint_contents, 2**31 in int_contents
        return None


GRPC_CASES = [case for case in CASES if _contents(case) is not None]


def _from_raw(case: JsonCase, raw: bytes, shape: list[int]) -> npt.NDArray[Any]:
    if case.datatype is not DataType.BYTES:
        return np.frombuffer(raw, dtype=case.datatype.numpy.newbyteorder("<")).reshape(shape)
    items = []
    offset = 0
    while offset < len(raw):
        (size,) = struct.unpack_from("<I", raw, offset)
        items.append(raw[offset + 4 : offset + 4 + size])
        offset += 4 + size
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array.reshape(shape)


@pytest.fixture(scope="module")
def stub(server: Server) -> Iterator[Any]:
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]


def test_grpc_asks_the_questions_that_arise_there() -> None:
    # the range questions a typed field leaves open are in the gRPC run
    assert {"uint8-300", "int8-200", "fp32-numbers", "bytes-from-str"} <= {
        case.id for case in GRPC_CASES
    }


@pytest.mark.parametrize("case", GRPC_CASES, ids=lambda case: case.id)
def test_grpc_typed_contents(stub: Any, case: JsonCase) -> None:
    request = pb.ModelInferRequest(
        model_name=model_name(case.datatype),
        inputs=[
            pb.ModelInferRequest.InferInputTensor(
                name="x",
                datatype=case.datatype.value,
                shape=_declared_shape(case.value),
                contents=_contents(case),
            )
        ],
    )
    if case.expected is None:
        with pytest.raises(grpc.RpcError) as raised:
            stub.ModelInfer(request)
        error: Any = raised.value
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, case.id
        assert dict(error.trailing_metadata())["modelport-error"] == "invalid_input"
        assert case.refused in error.details(), (case.id, error.details())
        return
    answer = stub.ModelInfer(request)
    output = answer.outputs[0]
    assert output.datatype == case.datatype.value
    _same(case, _from_raw(case, answer.raw_output_contents[0], list(output.shape)))
