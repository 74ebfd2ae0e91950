"""The ``modelport`` command through its installed entry point, as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_cli
from tests.onnx_models import iris_classifier, iris_data, make_add_model


@pytest.fixture
def pushed(home: Path, db_url: str, iris_onnx: Path) -> Path:
    """``home`` with iris@1 pushed, once per backend (the CLI reads MODELPORT_DB_URL)."""
    result = run_cli(
        "push", iris_onnx, "--name", "iris", "--alias", "production",
        "--tag", "team=vision", "--description", "Iris classifier",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "pushed iris@1" in result.stdout
    return home


def test_push_ls_show(pushed: Path, iris_onnx: Path) -> None:
    second = run_cli("push", iris_onnx, "--name", "iris", "--json")
    assert json.loads(second.stdout)["ref"] == "iris@2"

    models = json.loads(run_cli("ls", "--json").stdout)
    assert [(m["name"], m["latest"], m["versions"], m["aliases"]) for m in models] == [
        ("iris", 2, 2, {"production": 1})
    ]
    versions = json.loads(run_cli("ls", "iris", "--json").stdout)
    assert [v["version"] for v in versions] == [1, 2]

    table = run_cli("ls")
    assert "iris" in table.stdout and "production→1" in table.stdout

    shown = json.loads(run_cli("show", "iris@production", "--json").stdout)
    assert shown["version"] == 1
    assert shown["tags"] == {"team": "vision"}
    assert shown["description"] == "Iris classifier"
    assert shown["files"][0]["path"] == "iris.onnx"
    assert len(shown["files"][0]["sha256"]) == 64
    assert shown["signature"]["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]

    human = run_cli("show", "iris@production")
    assert human.returncode == 0
    assert "signature" in human.stdout and "input" in human.stdout and "FP32" in human.stdout


def test_alias_move_and_delete(pushed: Path, iris_onnx: Path) -> None:
    run_cli("push", iris_onnx, "--name", "iris")
    moved = run_cli("alias", "iris@2", "production")
    assert moved.returncode == 0
    assert "iris@production → iris@2" in moved.stdout
    assert json.loads(run_cli("show", "iris@production", "--json").stdout)["version"] == 2
    assert run_cli("alias", "--delete", "iris", "production").returncode == 0
    gone = run_cli("show", "iris@production")
    assert gone.returncode == 3
    assert gone.stderr == "error: model 'iris' has no alias 'production'; it has none\n"


def test_predict_from_json_npz_and_npy(pushed: Path, tmp_path: Path) -> None:
    features, _ = iris_data()
    expected = iris_classifier().predict(features[:3]).tolist()
    inline = run_cli(
        "predict", "iris@production", "--input", json.dumps({"input": features[:3].tolist()})
    )
    assert inline.returncode == 0, inline.stderr
    outputs = json.loads(inline.stdout)
    assert outputs["label"] == expected
    assert np.allclose(np.sum(outputs["probabilities"], axis=1), 1, atol=1e-5)

    np.save(tmp_path / "x.npy", features[:3])
    np.savez(tmp_path / "x.npz", input=features[:3])
    (tmp_path / "x.json").write_text(json.dumps({"input": features[:3].tolist()}))
    for source in ("x.npy", "x.npz", "x.json"):
        result = run_cli("predict", "iris", "--input", tmp_path / source)
        assert json.loads(result.stdout)["label"] == expected, source

    saved = run_cli(
        "predict",
        "iris",
        "--input",
        tmp_path / "x.npy",
        "--output",
        tmp_path / "out.npz",
        "--output-name",
        "label",
    )
    assert saved.returncode == 0
    with np.load(tmp_path / "out.npz") as archive:
        assert archive.files == ["label"]
        assert archive["label"].tolist() == expected


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (
            '{"float_input": [[5.1, 3.5, 1.4, 0.2]]}',
            "error: unknown input 'float_input'; the model takes 'input'",
        ),
        (
            '{"input": [[5.1, 3.5, 1.4]]}',
            r"error: input 'input': expected shape [-1, 4], received [1, 3]",
        ),
        (
            '{"input": [["a", "b", "c", "d"]]}',
            "error: input 'input': expected numbers for datatype FP32, received non-numeric JSON",
        ),
        ('{"input": [[5.1, 3.5, 1.4, 0.2]', "error: --input: invalid JSON"),
        ("{}", "error: missing input 'input' (FP32 [-1, 4])"),
    ],
)
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # checks input; no DB part
def test_predict_refuses_bad_input_in_one_line(pushed: Path, payload: str, message: str) -> None:
    result = run_cli("predict", "iris", "--input", payload)
    assert result.returncode == 2
    assert result.stderr.startswith(message)
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


def test_predict_refuses_wrong_dtype_from_npy(pushed: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((1, 4), np.float64))
    result = run_cli("predict", "iris", "--input", tmp_path / "x.npy")
    assert result.returncode == 2
    assert result.stderr == "error: input 'input': expected datatype FP32, received FP64\n"


def test_verify_detects_tampering(pushed: Path) -> None:
    ok = run_cli("verify", "iris@1")
    assert ok.returncode == 0 and "iris@1: ok" in ok.stdout
    blob = next((pushed / "artifacts" / "blobs").glob("*/*"))
    blob.chmod(0o644)
    blob.write_bytes(blob.read_bytes()[:-4] + b"evil")
    bad = run_cli("verify", "iris@1")
    assert bad.returncode == 7
    assert "DAMAGED" in bad.stdout and "iris.onnx: content changed" in bad.stdout
    assert bad.stderr == "error: 1 of 1 version(s) failed verification\n"
    assert run_cli("verify", "--all").returncode == 7
    refused = run_cli("predict", "iris", "--input", '{"input": [[1, 2, 3, 4]]}')
    assert refused.returncode == 7
    assert "does not match its manifest digest" in refused.stderr


def test_rm_refuses_aliased_version_unless_forced(pushed: Path, iris_onnx: Path) -> None:
    refused = run_cli("rm", "iris@1")
    assert refused.returncode == 4
    assert "alias production points at" in refused.stderr
    assert run_cli("rm", "iris@1", "--force").returncode == 0
    run_cli("push", iris_onnx, "--name", "iris")
    assert run_cli("rm", "iris").returncode == 2
    assert run_cli("rm", "iris", "--all").returncode == 0
    assert json.loads(run_cli("ls", "--json").stdout) == []


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["show", "irsi"], 3, "error: no model named 'irsi'; did you mean 'iris'?"),
        (["show", "iris@7"], 3, "error: model 'iris' has no version 7; latest is 1 (versions: 1)"),
        (["show", "../x"], 2, "error: model name '../x' contains a path separator"),
        (["alias", "iris@1", "42"], 2, "error: alias '42' is all digits"),
        (["push", "missing.onnx", "--name", "m"], 6, "error: missing.onnx does not exist"),
        (
            ["push", "README.txt", "--name", "m"],
            5,
            "error: README.txt: file of no known format; supported formats: ",
        ),
        (["push", "empty.onnx", "--name", "m"], 6, "error: empty.onnx is an empty file"),
        (["push", "garbage.onnx", "--name", "m"], 6, "error: "),
        (
            ["push", "add.onnx", "--name", "a/b"],
            2,
            "error: model name 'a/b' contains a path separator",
        ),
        (["push", "add.onnx", "--name", "x" * 129], 2, "is 129 characters long; the limit is 128"),
        (
            ["push", "add.onnx", "--name", "m", "--tag", "novalue"],
            2,
            "error: tag 'novalue' must look like key=value",
        ),
        (["verify"], 2, "error: name a version to verify"),
    ],
)
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # checks input; no DB part
def test_errors_are_one_line_with_an_exit_code(
    pushed: Path, tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    (tmp_path / "README.txt").write_text("not a model")
    (tmp_path / "empty.onnx").write_bytes(b"")
    (tmp_path / "garbage.onnx").write_bytes(b"\x00\xffnot protobuf\x13")
    make_add_model(tmp_path / "add.onnx")
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == code, result.stderr
    assert message in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert json.loads(run_cli("ls", "--json").stdout)[0]["versions"] == 1  # nothing stored


def test_usage_errors_and_help() -> None:
    assert run_cli("--help").returncode == 0
    missing = run_cli("push")
    assert missing.returncode == 2
    assert "Missing argument" in missing.stderr or "Missing" in missing.stderr


def test_gc_reports(pushed: Path) -> None:
    (pushed / "artifacts" / "staging" / "0123").mkdir()
    result = run_cli("gc")
    assert result.returncode == 0
    assert "1 interrupted push(es)" in result.stdout


def test_push_with_declared_signature_and_example(
    home: Path, iris_onnx: Path, tmp_path: Path
) -> None:
    signature = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
        ],
    }
    (tmp_path / "sig.json").write_text(json.dumps(signature))
    pushed = run_cli(
        "push", iris_onnx, "--name", "iris", "--signature", tmp_path / "sig.json", "--json"
    )
    assert pushed.returncode == 0, pushed.stderr
    assert json.loads(pushed.stdout)["signature"] == signature
    assert json.loads(pushed.stdout)["metadata"]["ir_version"] > 0

    wrong = {**signature, "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]}
    (tmp_path / "wrong.json").write_text(json.dumps(wrong))
    refused = run_cli("push", iris_onnx, "--name", "iris", "--signature", tmp_path / "wrong.json")
    assert refused.returncode == 2
    assert refused.stderr == "error: --signature must list the model's own inputs: 'input'\n"

    (tmp_path / "bad.json").write_text('{"inputs": [{"name": "x"}]}')
    bad = run_cli("push", iris_onnx, "--name", "iris", "--signature", tmp_path / "bad.json")
    assert bad.returncode == 2
    assert "each tensor needs a name, a datatype and a shape" in bad.stderr

    np.savez(tmp_path / "example.npz", input=np.zeros((1, 4), np.float32))
    with_example = run_cli(
        "push", iris_onnx, "--name", "iris", "--example", tmp_path / "example.npz"
    )
    assert with_example.returncode == 0, with_example.stderr
