"""TF Serving's REST API against a real ``modelport serve`` process, with a real HTTP client.

One server per module serves ``iris`` (two versions that disagree; ``stable`` -> 1, latest
2), ``add`` (two inputs, two outputs; versions 1 and 2), ``text`` (one BYTES input and
output) and ``total`` (a 0-d output: the sum of the whole input).
Predictions are compared with the same version run in-process through the registry.
"""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest
from onnx import TensorProto, helper

from modelport.types import Tensors
from tests.onnx_models import (
    iris_data,
    make_add_model,
    make_graph_model,
    make_identity_model,
    make_iris_onnx,
    tensor,
)
from tests.serving_fixtures import CLI, Server, cli_env, predict_in_process, push, running_server

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]


@dataclass
class Served:
    server: Server
    client: httpx.Client

    def alias(self, ref: str, alias: str) -> None:
        result = subprocess.run(
            [CLI, "alias", ref, alias], env=cli_env(self.server.home),
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr

    def predict(self, ref: str, inputs: Tensors) -> Tensors:
        """The same version, run in-process through the registry."""
        return predict_in_process(self.server.home, ref, inputs)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from sklearn.linear_model import LogisticRegression

    root = tmp_path_factory.mktemp("tfserving")
    home = root / "home"
    features, labels = iris_data()
    weak = LogisticRegression(C=0.01, max_iter=1000).fit(features, labels)
    push(home, make_iris_onnx(root / "v1" / "iris.onnx", zipmap=False, classifier=weak),
         "iris", "stable")  # fmt: skip
    push(home, make_iris_onnx(root / "v2" / "iris.onnx", zipmap=False), "iris")
    add = make_add_model(root / "add.onnx")
    push(home, add, "add")
    push(home, add, "add")
    push(home, make_identity_model(root / "text.onnx", {"text": TensorProto.STRING}), "text")
    total = make_graph_model(
        root / "total.onnx",
        [helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0)],
        [tensor("x", TensorProto.FLOAT, ["batch", 3])],
        [tensor("total", TensorProto.FLOAT, [])],
    )
    push(home, total, "total")
    with (
        running_server(home, ["iris", "add", "text", "total"], ["--no-grpc"]) as server,
        httpx.Client(base_url=server.http_url, timeout=30) as client,
    ):
        yield Served(server, client)
    assert server.proc.returncode == 0, server.output()
    assert "Traceback" not in server.output(), server.output()


def _iris_rows() -> dict[str, Any]:
    return {"input": np.array(ROWS, dtype=np.float32)}


def _assert_serves(served: Served) -> None:
    response = served.client.post("/v1/models/iris:predict", json={"instances": ROWS})
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == len(ROWS)


# -- status and metadata ------------------------------------------------------------------


def test_status_follows_loading_and_labels(served: Served) -> None:
    def status(*versions: tuple[str, str]) -> dict[str, Any]:
        ok = {"error_code": "OK", "error_message": ""}
        rows = [{"version": v, "state": state, "status": ok} for v, state in versions]
        return {"model_version_status": rows}

    # add@1 is not the default and no other test touches it: it loads on first use.
    assert served.client.get("/v1/models/add/versions/1").json() == status(("1", "START"))
    response = served.client.post(
        "/v1/models/add/versions/1:predict", json={"inputs": {"a": [[1, 2, 3]], "b": [[1, 2, 3]]}}
    )
    assert response.status_code == 200, response.text
    assert served.client.get("/v1/models/add").json() == status(
        ("1", "AVAILABLE"), ("2", "AVAILABLE")
    )
    labeled = served.client.get("/v1/models/iris/labels/stable").json()
    assert [row["version"] for row in labeled["model_version_status"]] == ["1"]
    assert served.client.get("/v1/models/iris/versions/2").json() == status(("2", "AVAILABLE"))


def test_metadata_in_tf_shape(served: Served) -> None:
    def tensor(name: str, dtype: str, dims: list[int]) -> dict[str, Any]:
        shape = {"dim": [{"size": str(d), "name": ""} for d in dims], "unknown_rank": False}
        return {"dtype": dtype, "tensor_shape": shape, "name": name}

    document = served.client.get("/v1/models/iris/metadata").json()
    assert document["model_spec"] == {"name": "iris", "signature_name": "", "version": "2"}
    signature = document["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature == {
        "inputs": {"input": tensor("input", "DT_FLOAT", [-1, 4])},
        "outputs": {
            "label": tensor("label", "DT_INT64", [-1]),
            "probabilities": tensor("probabilities", "DT_FLOAT", [-1, 3]),
        },
        "method_name": "tensorflow/serving/predict",
    }
    labeled = served.client.get("/v1/models/iris/labels/stable/metadata").json()
    assert labeled["model_spec"]["version"] == "1"
    versioned = served.client.get("/v1/models/iris/versions/1/metadata").json()
    assert versioned["model_spec"]["version"] == "1"
    text = served.client.get("/v1/models/text/metadata").json()["metadata"]["signature_def"]
    assert text["signature_def"]["serving_default"]["inputs"]["text"]["dtype"] == "DT_STRING"


# -- predict --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "ref"),
    [
        ("/v1/models/iris", "iris@2"),
        ("/v1/models/iris/versions/1", "iris@1"),
        ("/v1/models/iris/versions/2", "iris@2"),
        ("/v1/models/iris/labels/stable", "iris@1"),
    ],
)
def test_predict_rows_and_columns_match_in_process(served: Served, path: str, ref: str) -> None:
    expected = served.predict(ref, _iris_rows())

    rows = served.client.post(f"{path}:predict", json={"instances": ROWS})
    assert rows.status_code == 200, rows.text
    predictions = rows.json()["predictions"]
    assert [set(p) for p in predictions] == [{"label", "probabilities"}] * len(ROWS)
    assert [p["label"] for p in predictions] == expected["label"].tolist()
    np.testing.assert_allclose(
        [p["probabilities"] for p in predictions], expected["probabilities"], rtol=1e-5
    )

    for body in ({"inputs": ROWS}, {"inputs": {"input": ROWS}}):
        columns = served.client.post(f"{path}:predict", json=body)
        assert columns.status_code == 200, columns.text
        outputs = columns.json()["outputs"]
        assert outputs["label"] == expected["label"].tolist()
        np.testing.assert_allclose(outputs["probabilities"], expected["probabilities"], rtol=1e-5)


def test_versions_really_differ(served: Served) -> None:
    def probabilities(path: str) -> Any:
        response = served.client.post(f"{path}:predict", json={"inputs": ROWS})
        return response.json()["outputs"]["probabilities"]

    assert not np.allclose(
        probabilities("/v1/models/iris/versions/1"), probabilities("/v1/models/iris")
    )


def test_single_input_rows_may_name_the_input(served: Served) -> None:
    named = {"instances": [{"input": row} for row in ROWS], "signature_name": "serving_default"}
    plain = {"instances": ROWS}
    first, second = (served.client.post("/v1/models/iris:predict", json=b) for b in (named, plain))
    assert first.status_code == 200, first.text
    assert first.json() == second.json()


def test_multi_input_multi_output(served: Served) -> None:
    a = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    b = [[0.5, 0.5, 0.5], [2.0, -1.0, 0.0]]
    expected = served.predict(
        "add@2", {"a": np.array(a, dtype=np.float32), "b": np.array(b, dtype=np.float32)}
    )
    rows = served.client.post(
        "/v1/models/add:predict",
        json={"instances": [{"a": x, "b": y} for x, y in zip(a, b, strict=True)]},
    )
    assert rows.status_code == 200, rows.text
    assert rows.json() == {
        "predictions": [
            {"sum": expected["sum"][i].tolist(), "product": expected["product"][i].tolist()}
            for i in range(2)
        ]
    }
    columns = served.client.post("/v1/models/add:predict", json={"inputs": {"a": a, "b": b}})
    assert columns.json() == {
        "outputs": {"sum": expected["sum"].tolist(), "product": expected["product"].tolist()}
    }


def test_strings_and_b64(served: Served) -> None:
    encoded = base64.b64encode("héllo".encode()).decode()
    rows = served.client.post(
        "/v1/models/text:predict", json={"instances": [["plain", {"b64": encoded}], ["x", "y"]]}
    )
    assert rows.status_code == 200, rows.text
    assert rows.json() == {"predictions": [["plain", "héllo"], ["x", "y"]]}
    named = served.client.post(
        "/v1/models/text:predict", json={"instances": [{"text": [{"b64": encoded}, "z"]}]}
    )
    assert named.json() == {"predictions": [["héllo", "z"]]}
    columns = served.client.post("/v1/models/text:predict", json={"inputs": [["a", "b"]]})
    assert columns.json() == {"outputs": [["a", "b"]]}


def test_a_0d_output_is_a_column_not_rows(served: Served) -> None:
    columns = served.client.post(
        "/v1/models/total:predict", json={"inputs": [[1, 2, 3], [4, 5, 6]]}
    )
    assert columns.json() == {"outputs": 21.0}
    rows = served.client.post("/v1/models/total:predict", json={"instances": [[1, 2, 3]]})
    assert rows.status_code == 400
    assert "do not split into rows" in rows.json()["error"]


def test_label_follows_a_moved_alias(served: Served) -> None:
    def version(path: str) -> str:
        status = served.client.get(path).json()["model_version_status"]
        return str(status[0]["version"])

    served.alias("iris@1", "canary")
    assert version("/v1/models/iris/labels/canary") == "1"
    served.alias("iris@2", "canary")
    assert version("/v1/models/iris/labels/canary") == "2"
    response = served.client.post("/v1/models/iris/labels/canary:predict", json={"inputs": ROWS})
    expected = served.predict("iris@2", _iris_rows())
    np.testing.assert_allclose(
        response.json()["outputs"]["probabilities"], expected["probabilities"], rtol=1e-5
    )


def test_requests_are_counted_as_tfserving(served: Served) -> None:
    _assert_serves(served)
    metrics = served.client.get("/metrics").text
    assert any('protocol="tfserving"' in line for line in metrics.splitlines())


# -- failures -------------------------------------------------------------------------------

BAD_B64 = {"instances": [[{"b64": "not base64!"}, "x"]]}


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "says"),
    [
        ("GET", "/v1/models/nope", None, 404, "'nope' is not served"),
        ("GET", "/v1/models/iris/versions/9", None, 404, "no version 9"),
        ("GET", "/v1/models/iris/labels/nope", None, 404, "no alias 'nope'"),
        ("GET", "/v1/models/nope/metadata", None, 404, "not served"),
        ("POST", "/v1/models/nope:predict", {"instances": ROWS}, 404, "not served"),
        ("POST", "/v1/models/iris/versions/9:predict", {"instances": ROWS}, 404, "no version 9"),
        ("POST", "/v1/models/iris/labels/nope:predict", {"instances": ROWS}, 404, "no alias"),
        ("POST", "/v1/models/iris/versions/x:predict", {"instances": ROWS}, 400, "positive integer"),
        ("POST", "/v1/models/iris:classify", {"examples": []}, 404, ":predict"),
        ("POST", "/v1/models/iris", {"instances": ROWS}, 404, ":predict"),
        ("GET", "/v1/models/iris/versions/1/nope", None, 404, "no TF Serving endpoint"),
        ("GET", "/v1/models/iris:predict", None, 404, "no TF Serving endpoint GET"),
        ("GET", "/v1/models/iris/labels/stable:predict", None, 404, "no TF Serving endpoint"),
        ("POST", "/v1/models/iris:predict", b"{not json", 400, "not valid JSON"),
        ("POST", "/v1/models/iris:predict", [1, 2], 400, "JSON object"),
        ("POST", "/v1/models/iris:predict", {}, 400, "neither 'instances' nor 'inputs'"),
        ("POST", "/v1/models/iris:predict", {"instances": ROWS, "inputs": ROWS}, 400, "both"),
        ("POST", "/v1/models/iris:predict", {"instances": []}, 400, "non-empty list"),
        ("POST", "/v1/models/iris:predict", {"inputs": {"x": ROWS}}, 400, "unknown input 'x'"),
        ("POST", "/v1/models/iris:predict", {"instances": [{"x": ROWS[0]}]}, 400, "unknown input"),
        ("POST", "/v1/models/iris:predict", {"instances": [[1, 2, 3, 4], [1, 2]]}, 400, "ragged"),
        ("POST", "/v1/models/iris:predict", {"instances": [[1, 2, 3]]}, 400, "expected shape"),
        ("POST", "/v1/models/iris:predict", {"instances": [["a", "b", "c", "d"]]}, 400, "numbers"),
        ("POST", "/v1/models/iris:predict",
         {"instances": [{"input": ROWS[0]}, ROWS[1]]}, 400, "mixes"),
        ("POST", "/v1/models/iris:predict",
         {"inputs": ROWS, "signature_name": "classify"}, 400, "signature_name"),
        ("POST", "/v1/models/add:predict", {"instances": [[1, 2, 3]]}, 400, "takes 2 inputs"),
        ("POST", "/v1/models/add:predict",
         {"instances": [{"a": [1, 2, 3], "b": [1, 2, 3]}, {"a": [1, 2, 3]}]}, 400, "same inputs"),
        ("POST", "/v1/models/add:predict", {"inputs": {"a": [[1, 2, 3]]}}, 400, "missing input 'b'"),
        ("POST", "/v1/models/text:predict", BAD_B64, 400, "invalid base64"),
        ("POST", "/v1/models/text:predict",
         {"instances": [[{"b64": "eA==", "more": 1}, "x"]]}, 400, '{"b64"'),
    ],
)  # fmt: skip
def test_failures_answer_in_tf_shape_and_server_still_serves(
    served: Served, method: str, path: str, body: Any, status: int, says: str
) -> None:
    if isinstance(body, bytes):
        response = served.client.request(method, path, content=body)
    else:
        response = served.client.request(method, path, json=body)
    assert response.status_code == status, response.text
    document = response.json()
    assert list(document) == ["error", "code"]
    assert says in document["error"]
    _assert_serves(served)
