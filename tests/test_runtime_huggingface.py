"""The ``huggingface`` runtime against a tiny BERT classifier built here and the real MiniLM
sentence-transformers model: text in as BYTES, predictions equal to transformers' and
sentence-transformers' own, the refusals (pickles, custom code, broken directories, unknown
tasks, no transformers), and serving through a real server over V2 REST JSON."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from modelport import Registry, Settings
from modelport.errors import InvalidInput, InvalidModel, ModelportError, UnsupportedFormat
from modelport.runtimes import CheckedModel, LoadedModel, LoadOptions, PushOptions, default_runtimes
from modelport.runtimes.huggingface.runtime import HuggingFaceRuntime
from modelport.runtimes.threads import ProcessThreads
from modelport.runtimes.torch import runtime as pytorch_runtime
from modelport.types import DataType, Signature, TensorSpec
from tests.conftest import run_cli
from tests.hf_models import (
    LABELS,
    SENTENCES,
    classify,
    copy_minilm,
    encode,
    save_classifier,
    save_pickled_copy,
)
from tests.serving_fixtures import cli_env, predict_in_process, running_server

RUNTIME = HuggingFaceRuntime()
# The last text is longer than the classifier's 16 tokens and MiniLM's 256: both truncate.
TEXTS = [*SENTENCES, "a great movie " * 200]
SUPPORTED = "feature-extraction, sentence-embedding, sentiment-analysis, text-classification"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The model directories the tests use, made once per worker."""
    root = tmp_path_factory.mktemp("hf")
    classifier = save_classifier(root / "sentiment")
    return {
        "classifier": classifier,
        "pickled": save_pickled_copy(classifier, root / "pickled"),
        "minilm": copy_minilm(root / "minilm"),
    }


@pytest.fixture(scope="module")
def expected(models: dict[str, Path]) -> dict[str, np.ndarray[Any, Any]]:
    """What transformers and sentence-transformers themselves compute on ``TEXTS``."""
    return {
        "probabilities": classify(models["classifier"], TEXTS),
        "embedding": encode(models["minilm"], TEXTS),
    }


@pytest.fixture
def sqlite_registry(home: Path) -> Iterator[Registry]:
    with Registry(Settings(home=home)) as registry:
        yield registry


def texts(*items: str | bytes) -> np.ndarray[Any, Any]:
    array = np.empty(len(items), dtype=object)
    array[:] = list(items)
    return array


def copy_of(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def labels_of(probabilities: np.ndarray[Any, Any]) -> list[bytes]:
    return [LABELS[int(index)].encode() for index in probabilities.argmax(axis=1)]


# --- text classification ----------------------------------------------------------------------


def test_classifier_pushed_through_the_cli_predicts_like_transformers(
    home: Path, models: dict[str, Path], expected: dict[str, Any]
) -> None:
    pushed = run_cli(
        "push", models["classifier"], "--name", "sentiment", "--task", "text-classification",
        "--json",
    )  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr
    version = json.loads(pushed.stdout)
    assert version["format"] == "huggingface"
    assert Signature.from_dict(version["signature"]) == Signature(
        inputs=(TensorSpec("text", DataType.BYTES, (-1,)),),
        outputs=(
            TensorSpec("label", DataType.BYTES, (-1,)),
            TensorSpec("probabilities", DataType.FP32, (-1, 3)),
        ),
    )

    # bytes and str elements alike; the last text is cut to the model's 16 tokens.
    result = predict_in_process(home, "sentiment", {"text": texts(*TEXTS[:3], *TEXTS[3:])})
    probabilities = result["probabilities"]
    assert probabilities.dtype == np.float32 and probabilities.shape == (len(TEXTS), 3)
    np.testing.assert_allclose(probabilities, expected["probabilities"], rtol=1e-5, atol=1e-6)
    assert result["label"].dtype == object
    assert list(result["label"]) == labels_of(expected["probabilities"])
    assert len(set(result["label"])) > 1, "random weights should not give every text one label"

    # The CLI saves BYTES outputs to .npz as fixed-width bytes, readable without pickle.
    request, saved = home.parent / "texts.json", home.parent / "out.npz"
    request.write_text(json.dumps({"text": TEXTS[:3]}))
    predicted = run_cli("predict", "sentiment", "--input", request, "--output", saved)
    assert predicted.returncode == 0, predicted.stderr
    with np.load(saved, allow_pickle=False) as written:
        assert [bytes(label) for label in written["label"]] == list(result["label"][:3])
        np.testing.assert_allclose(
            written["probabilities"], probabilities[:3], rtol=1e-5, atol=1e-6
        )


def test_the_task_and_labels_are_recorded_and_inferred_without_task(
    sqlite_registry: Registry, models: dict[str, Path]
) -> None:
    version = sqlite_registry.push(models["classifier"], "sentiment")

    assert version.format == "huggingface"
    assert version.metadata["task"] == "text-classification"
    assert version.metadata["labels"] == ["negative", "neutral", "positive"]
    assert version.metadata["max_length"] == 16
    assert version.metadata["weights"] == "safetensors"
    stored = sorted(entry.path for entry in version.files)
    assert stored == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]


def test_inputs_the_model_cannot_take(sqlite_registry: Registry, models: dict[str, Path]) -> None:
    sqlite_registry.push(models["classifier"], "sentiment")
    model = sqlite_registry.load("sentiment")

    with pytest.raises(InvalidInput, match=r"'text': expected datatype BYTES, received FP32"):
        model.predict({"text": np.zeros(2, np.float32)})
    with pytest.raises(InvalidInput, match=r"'text': expected shape \[-1\], received \[1, 2\]"):
        model.predict({"text": texts("a", "b").reshape(1, 2)})
    with pytest.raises(InvalidInput, match=r"element 1 is not UTF-8 text"):
        model.predict({"text": texts(b"fine", b"\xff\xfe")})
    with pytest.raises(InvalidInput, match=r"element 0 is a int, not a string"):
        model.predict({"text": texts(3)})  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match=r"unknown output 'logits'"):
        model.predict({"text": texts("a")}, outputs=["logits"])

    only = model.predict({"text": np.array(["fixed width str"])}, outputs=["label"])
    assert list(only) == ["label"] and only["label"].shape == (1,)
    empty = model.predict({"text": texts()})
    assert empty["label"].shape == (0,) and empty["probabilities"].shape == (0, 3)
    model.close()


def test_concurrent_predictions_from_many_threads_with_one_torch_thread(
    sqlite_registry: Registry,
    models: dict[str, Path],
    expected: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sqlite_registry.push(models["classifier"], "sentiment")
    # The thread count is torch's, one per process, shared with the PyTorch runtimes.
    monkeypatch.setattr(pytorch_runtime, "_TORCH_THREADS", ProcessThreads("PyTorch"))
    before = torch.get_num_threads()
    try:
        model = sqlite_registry.load("sentiment", LoadOptions(intra_op_threads=1))
        assert torch.get_num_threads() == 1
        _predict_from_threads(model, expected)
    finally:
        torch.set_num_threads(before)


def _predict_from_threads(model: LoadedModel, expected: dict[str, Any]) -> None:
    def one(index: int) -> Any:
        row = index % len(TEXTS)
        return row, model.predict({"text": texts(TEXTS[row])})["probabilities"][0]

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(one, range(48)))
    for row, probabilities in results:
        # Alone, a text has no padding: equal to the padded batch up to float rounding.
        np.testing.assert_allclose(probabilities, expected["probabilities"][row], atol=1e-5)


def test_pickled_weights_need_trust(
    sqlite_registry: Registry, models: dict[str, Path], expected: dict[str, Any]
) -> None:
    with pytest.raises(InvalidModel) as refused:
        sqlite_registry.push(models["pickled"], "pickled")
    assert str(refused.value) == (
        "pickled: its weights are pytorch_model.bin, a pickle, and loading a pickle can run "
        "code from the file; modelport takes it only with --trust-pickle (add it if you trust "
        "the file's source), or save the weights as safetensors (model.save_pretrained"
        "(directory) writes model.safetensors), which hold tensors only"
    )
    assert sqlite_registry.list_models() == []

    version = sqlite_registry.push(models["pickled"], "pickled", trust_pickle=True)
    assert version.metadata["weights"] == "pickle"
    result = sqlite_registry.load("pickled").predict({"text": texts(*TEXTS)})
    np.testing.assert_allclose(result["probabilities"], expected["probabilities"], atol=1e-6)


# --- sentence embeddings ----------------------------------------------------------------------


def test_sentence_transformers_directory_embeds_like_sentence_transformers(
    sqlite_registry: Registry, models: dict[str, Path], expected: dict[str, Any]
) -> None:
    version = sqlite_registry.push(models["minilm"], "minilm")

    assert version.metadata["task"] == "sentence-embedding"
    assert version.metadata["pooling"] == ["mean"] and version.metadata["normalize"] is True
    assert version.metadata["max_length"] == 256  # sentence_bert_config.json, not the 512 of BERT
    assert version.signature.outputs == (TensorSpec("embedding", DataType.FP32, (-1, 384)),)
    assert "README.md" in {entry.path for entry in version.files}
    assert not any(entry.path.startswith(".") for entry in version.files)

    embedding = sqlite_registry.load("minilm").predict({"text": texts(*TEXTS)})["embedding"]
    assert embedding.dtype == np.float32 and embedding.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(embedding, expected["embedding"], rtol=1e-4, atol=1e-5)
    cosine = (embedding * expected["embedding"]).sum(axis=1)
    np.testing.assert_allclose(cosine, 1.0, atol=1e-5)


def test_feature_extraction_of_a_plain_transformer_mean_pools(
    tmp_path: Path, models: dict[str, Path], expected: dict[str, Any]
) -> None:
    plain = copy_of(models["minilm"], tmp_path / "plain")
    (plain / "modules.json").unlink()
    info = RUNTIME.inspect(plain, PushOptions())  # architectures: BertModel
    assert info.metadata["task"] == "feature-extraction"
    assert info.metadata["normalize"] is False and info.metadata["max_length"] == 512

    model = CheckedModel(RUNTIME.load(plain, LoadOptions(metadata=info.metadata)))
    embedding = model.predict({"text": texts(*SENTENCES)})["embedding"]
    # Mean pooling alone: the sentence-transformers embedding is its unit vector.
    unit = embedding / np.linalg.norm(embedding, axis=1, keepdims=True)
    np.testing.assert_allclose(unit, expected["embedding"][: len(SENTENCES)], atol=1e-5)


def test_cls_and_max_pooling_are_read_from_the_pooling_config(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    directory = copy_of(models["minilm"], tmp_path / "pooled")
    pooling = {"word_embedding_dimension": 384, "pooling_mode": ["cls", "max"]}
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    info = RUNTIME.inspect(directory, PushOptions(task="feature-extraction"))
    assert info.signature.outputs[0].shape == (-1, 768)

    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(directory), device="cpu", local_files_only=True)
    model = CheckedModel(RUNTIME.load(directory, LoadOptions(metadata=info.metadata)))
    embedding = model.predict({"text": texts(*SENTENCES[:3])})["embedding"]
    np.testing.assert_allclose(embedding, reference.encode(SENTENCES[:3]), atol=1e-5)


# --- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "task", "message"),
    [
        ("classifier", "summarization", rf"unsupported task 'summarization'; supported tasks: {SUPPORTED}$"),
        ("classifier", "token-classification", r"unsupported task 'token-classification'"),
        ("minilm", "text-classification", r"minilm has no sequence-classification head \(architectures: BertModel\)"),
    ],
)  # fmt: skip
def test_tasks_the_model_cannot_serve(
    sqlite_registry: Registry, models: dict[str, Path], model: str, task: str, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        sqlite_registry.push(models[model], "m", task=task)
    assert sqlite_registry.list_models() == []


def test_a_signature_or_example_is_refused(models: dict[str, Path]) -> None:
    with pytest.raises(InvalidInput, match=r"signature follows from its task"):
        RUNTIME.inspect(models["classifier"], PushOptions(example={"text": texts("a")}))


def _damage(directory: Path, kind: str) -> None:
    if kind == "garbage-config":
        (directory / "config.json").write_text("{not json")
    elif kind == "list-config":
        (directory / "config.json").write_text("[]")
    elif kind == "no-weights":
        (directory / "model.safetensors").unlink()
    elif kind == "no-tokenizer":
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (directory / name).unlink()
    elif kind == "broken-tokenizer":
        (directory / "tokenizer.json").write_text('{"model": 3}')
    elif kind == "truncated":
        weights = directory / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:5000])
    elif kind == "wrong-shapes":
        config = json.loads((directory / "config.json").read_text())
        (directory / "config.json").write_text(json.dumps(config | {"hidden_size": 64}))
    elif kind in ("auto-map", "tokenizer-auto-map"):
        name = "config.json" if kind == "auto-map" else "tokenizer_config.json"
        settings = json.loads((directory / name).read_text())
        settings["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
        (directory / name).write_text(json.dumps(settings))
        (directory / "modeling_evil.py").write_text("raise SystemExit('ran remote code')\n")
    else:  # an architecture transformers does not know
        config = json.loads((directory / "config.json").read_text())
        (directory / "config.json").write_text(json.dumps(config | {"model_type": "evilbert"}))


@pytest.mark.parametrize(
    ("kind", "error", "message"),
    [
        ("garbage-config", InvalidModel, r"^broken: config\.json is not valid JSON$"),
        ("list-config", InvalidModel, r"^broken: config\.json is not a JSON object$"),
        ("no-weights", InvalidModel, r"^broken: no PyTorch weights \(model\.safetensors or pytorch_model\.bin\)"),
        ("no-tokenizer", InvalidModel, r"^broken: no tokenizer files"),
        ("broken-tokenizer", InvalidModel, r"^broken: the tokenizer could not be loaded: "),
        ("truncated", InvalidModel, r"^broken: the model could not be loaded: .*header"),
        ("wrong-shapes", InvalidModel, r"^broken: the model could not be loaded: "),
        ("auto-map", UnsupportedFormat, r"config\.json names custom code \(auto_map\).* never runs"),
        ("tokenizer-auto-map", UnsupportedFormat, r"tokenizer_config\.json names custom code"),
        ("unknown-type", UnsupportedFormat, r"has no built-in model type 'evilbert'"),
    ],
)  # fmt: skip
def test_broken_directories_are_refused_and_nothing_is_stored(
    sqlite_registry: Registry,
    models: dict[str, Path],
    tmp_path: Path,
    kind: str,
    error: type[ModelportError],
    message: str,
) -> None:
    directory = copy_of(models["classifier"], tmp_path / "broken")
    _damage(directory, kind)
    with pytest.raises(error, match=message) as raised:
        sqlite_registry.push(directory, "broken")
    assert "\n" not in str(raised.value)
    assert sqlite_registry.list_models() == []


def test_detect(models: dict[str, Path], tmp_path: Path) -> None:
    table = default_runtimes()
    assert table.detect(models["classifier"]).format == "huggingface"
    assert table.detect(models["minilm"]).format == "huggingface"
    assert table.detect(models["pickled"]).format == "huggingface"
    assert not RUNTIME.detect(models["classifier"] / "config.json")
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "config.json").write_text("{}")
    assert not RUNTIME.detect(lone)  # a config alone could be anything's
    # An MLflow model directory is the MLflow runtime's, whatever else it holds.
    mlflow = copy_of(models["classifier"], tmp_path / "mlflow")
    (mlflow / "MLmodel").write_text("flavors: {}\n")
    assert not RUNTIME.detect(mlflow)
    with pytest.raises(UnsupportedFormat, match=r"mlflow is an MLflow model"):
        RUNTIME.inspect(mlflow, PushOptions())


def test_cli_refusals_say_why_in_one_line(home: Path, models: dict[str, Path]) -> None:
    result = run_cli("push", models["pickled"], "--name", "pickled")
    assert result.returncode == 6
    assert result.stderr.startswith("error: pickled: its weights are pytorch_model.bin, a pickle")
    assert result.stderr.count("\n") == 1


_WITHOUT_TRANSFORMERS = """
import sys
sys.modules["transformers"] = None  # as an install without modelport[huggingface] looks
from modelport.cli.main import run
run(sys.argv[1:])
"""


def test_without_transformers_the_cli_names_the_extra(home: Path, models: dict[str, Path]) -> None:
    args = ["push", str(models["classifier"]), "--name", "sentiment"]
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TRANSFORMERS, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(home),
        check=False,
    )
    assert result.returncode == 8, result.stderr
    assert result.stderr.strip() == (
        "error: serving Hugging Face models needs transformers and PyTorch, which are "
        "missing: pip install 'modelport[huggingface]'"
    )
    with Registry(Settings(home=home)) as registry:
        assert registry.list_models() == []


# --- serving ----------------------------------------------------------------------------------


def _infer(client: httpx.Client, url: str, items: list[str]) -> dict[str, Any]:
    body = {"inputs": [{"name": "text", "shape": [len(items)], "datatype": "BYTES", "data": items}]}
    response = client.post(url, json=body)
    assert response.status_code == 200, response.text
    return {output["name"]: output for output in response.json()["outputs"]}


def test_text_models_served_over_v2_rest_with_bytes_inputs(
    home: Path, tmp_path: Path, models: dict[str, Path], expected: dict[str, Any]
) -> None:
    with Registry(Settings(home=home)) as registry:
        registry.push(models["classifier"], "sentiment")
        registry.push(models["minilm"], "minilm")
    config = tmp_path / "serve.toml"
    # One worker and a batching window: concurrent requests must merge into batches.
    config.write_text(
        "[defaults]\ninstances = 1\nthreads = 1\nmax_queue_delay_ms = 50\ninline_below_us = 0\n"
    )
    with (
        running_server(home, ["sentiment", "minilm"], ["--config", str(config), "--no-grpc"])
        as server,
        httpx.Client(timeout=60, limits=httpx.Limits(max_connections=16)) as client,
    ):  # fmt: skip
        url = f"{server.http_url}/v2/models/sentiment/infer"
        outputs = _infer(client, url, TEXTS)
        assert outputs["label"]["datatype"] == "BYTES"
        assert outputs["label"]["data"] == [
            b.decode() for b in labels_of(expected["probabilities"])
        ]
        assert outputs["probabilities"]["shape"] == [len(TEXTS), 3]
        probabilities = np.array(outputs["probabilities"]["data"], np.float32).reshape(-1, 3)
        np.testing.assert_allclose(probabilities, expected["probabilities"], atol=1e-5)

        embed_url = f"{server.http_url}/v2/models/minilm/infer"

        def one_row(index: int) -> Any:
            row = index % len(SENTENCES)
            return row, _infer(client, embed_url, [SENTENCES[row]])["embedding"]

        with ThreadPoolExecutor(max_workers=8) as pool:
            rows = list(pool.map(one_row, range(24)))
        for row, output in rows:
            assert output["shape"] == [1, 384] and output["datatype"] == "FP32"
            np.testing.assert_allclose(output["data"], expected["embedding"][row], atol=1e-5)
        metrics = client.get(f"{server.http_url}/metrics").text
    assert server.proc.returncode == 0
    batched = [
        line for line in metrics.splitlines()
        if line.startswith("modelport_batch_size_bucket") and 'model="minilm"' in line
    ]  # fmt: skip
    counts = {
        line.split('le="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1]) for line in batched
    }
    assert counts["+Inf"] - counts["1.0"] > 0, "no batch of texts held more than one request"
