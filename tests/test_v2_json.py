"""Large V2 JSON bodies (simdjson): the same request, tensor for tensor, as orjson gives."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from modelport.errors import InvalidInput
from modelport.protocols.v2 import json_body
from modelport.protocols.v2.codec import array_from_data
from modelport.types import DataType

pytestmark = pytest.mark.skipif(not json_body.available(), reason="pysimdjson is not installed")


def _request(data: object, datatype: str = "FP32", shape: list[int] | None = None) -> bytes:
    item = {"name": "x", "datatype": datatype, "shape": shape or [2, 2], "data": data}
    return orjson.dumps(
        {"id": "42", "inputs": [item], "outputs": [{"name": "y"}], "parameters": {"a": [1]}}
    )


def _tensor(body: bytes, decode: object) -> np.ndarray:
    document = decode(body)  # type: ignore[operator]
    item = document["inputs"][0]
    datatype = DataType.parse(item["datatype"])
    return array_from_data("x", datatype, tuple(item["shape"]), item["data"])


@pytest.mark.parametrize("datatype", ["FP16", "FP32", "FP64"])
def test_flat_float_data_equals_orjson_bit_for_bit(datatype: str) -> None:
    values = np.random.default_rng(0).standard_normal(150_528).astype(np.float32)
    body = _request(values.tolist(), datatype, [1, 3, 224, 224])
    fast, plain = _tensor(body, json_body.request_document), _tensor(body, orjson.loads)
    assert fast.dtype == plain.dtype
    np.testing.assert_array_equal(fast, plain)


def test_everything_but_float_data_is_plain_json() -> None:
    body = _request([1, 2.5, -0.0, 1e-30])
    document = json_body.request_document(body)
    assert isinstance(document["inputs"][0]["data"], np.ndarray)
    del document["inputs"][0]["data"]
    expected = orjson.loads(body)
    del expected["inputs"][0]["data"]
    assert document == expected


@pytest.mark.parametrize(
    ("data", "datatype"),
    [
        ([[1.0, 2.0], [3.0, 4.0]], "FP32"),  # nested: numpy judges it
        ([1, 2, 3, 4], "INT64"),  # integers keep Python's exact values
        ([1.0, "2", 3.0, 4.0], "FP32"),  # a string: refused the ordinary way
        ([True, 1.0, 2.0, 3.0], "FP32"),
        ([1.0, None, 2.0, 3.0], "FP32"),
        ([[1.0, 2.0], [3.0]], "FP32"),  # ragged
        ([], "FP32"),
        (["a", "b", "c", "d"], "BYTES"),
    ],
)
def test_other_data_is_decoded_and_judged_as_before(data: object, datatype: str) -> None:
    body = _request(data, datatype)
    document = json_body.request_document(body)
    assert document == orjson.loads(body)
    try:
        expected: object = _tensor(body, orjson.loads)
    except InvalidInput as exc:
        expected = str(exc)
    try:
        got: object = _tensor(body, json_body.request_document)
    except InvalidInput as exc:
        got = str(exc)
    if isinstance(expected, np.ndarray):
        np.testing.assert_array_equal(got, expected)  # type: ignore[arg-type]
    else:
        assert got == expected


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"inputs": [1, 2', "request body is not valid JSON"),
        (b"\xff\xfe", "request body is not valid JSON"),
        (b"[1, 2, 3]", "request body must be a JSON object"),
        (b'"text"', "request body must be a JSON object"),
    ],
)
def test_bad_bodies_are_invalid_input(body: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        json_body.request_document(body)


def test_a_proxy_kept_alive_does_not_break_the_next_request() -> None:
    # A traceback that holds the previous document's proxies must not make the parser
    # refuse every later body.
    import simdjson

    kept = simdjson.Parser()
    json_body._local.parser = kept  # the parser this thread will use
    holder = kept.parse(b'{"a": [1, 2]}')
    document = json_body.request_document(_request([1.0, 2.0, 3.0, 4.0]))
    assert document["inputs"][0]["data"].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert holder["a"].as_list() == [1, 2]


def test_a_body_that_may_hold_an_array_past_simdjsons_count_is_refused_unparsed() -> None:
    # simdjson counts an array's elements in 24 bits and pysimdjson trusts the saturated
    # count (a heap corruption): no body that may hold more than MAX_VALUES reaches it.
    from modelport.errors import PayloadTooLarge

    def body(commas: int) -> bytes:
        pad = b" " * (2 * json_body.MAX_VALUES + 3 - commas)  # past the size rule's bound
        return b'{"text": "%s", "pad": "%s"}' % (b"," * (commas - 1), pad)

    with pytest.raises(PayloadTooLarge, match=f"at most {json_body.MAX_VALUES} values"):
        json_body.request_body(body(json_body.MAX_VALUES))
    document = json_body.request_body(body(json_body.MAX_VALUES - 1))
    assert len(document["text"]) == json_body.MAX_VALUES - 2


def test_json_nested_past_simdjsons_depth_is_invalid_input() -> None:
    deep = b'{"inputs": ' + b"[" * 1100 + b"]" * 1100 + b', "pad": "' + b"x" * 70_000 + b'"}'
    for _ in range(2):  # and the thread's parser still works afterwards
        with pytest.raises(InvalidInput, match="not valid JSON"):
            json_body.request_document(deep)
    assert json_body.request_document(_request([1.0, 2.0, 3.0, 4.0]))["id"] == "42"


@pytest.mark.parametrize("bad", [True, None, "1.0"])
def test_the_float_fast_path_takes_numbers_only(bad: object) -> None:
    data = [1.0] * 10 + [bad] + [2.0] * 10
    document = json_body.request_document(_request(data, shape=[21]))
    assert document["inputs"][0]["data"] == data  # plain JSON, judged by the one rule
    with pytest.raises(InvalidInput, match="non-numeric JSON"):
        _tensor(_request(data, shape=[21]), json_body.request_document)


def test_a_large_body_gets_a_parser_of_its_own() -> None:
    # A parser keeps the buffers of the largest document it parsed: the thread's own
    # parser, kept for the next request, must not be the one that meets a large body.
    import simdjson

    kept = json_body._local.parser = simdjson.Parser()
    holder = kept.parse(b'{"a": [1, 2]}')  # kept cannot parse while this lives
    values = [0.5] * (3 * 2**20)  # about 12 MiB of JSON
    document = json_body.request_document(_request(values, shape=[len(values)]))
    assert document["inputs"][0]["data"].size == len(values)
    assert json_body._local.parser is kept  # not used, so not replaced either
    assert holder["a"].as_list() == [1, 2]
