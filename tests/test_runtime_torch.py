"""The PyTorch runtimes (``torchscript``, ``torch_export``) against real torch networks saved
the way PyTorch saves them: signatures, predictions equal to the module's own, the refusals
(pickles, untrusted files, broken archives, no PyTorch), and serving through a real server."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from torch import nn

from modelport import Registry, Settings
from modelport.errors import (
    InvalidInput,
    InvalidModel,
    ModelportError,
    UnsupportedFormat,
)
from modelport.runtimes import CheckedModel, LoadedModel, LoadOptions, PushOptions, default_runtimes
from modelport.runtimes.threads import ProcessThreads
from modelport.runtimes.torch import runtime as pytorch_runtime
from modelport.runtimes.torch.runtime import TorchExportRuntime, TorchScriptRuntime
from modelport.types import DataType, Signature, TensorSpec
from tests.conftest import run_cli
from tests.serving_fixtures import predict_in_process, running_server
from tests.torch_models import (
    DictHeads,
    TwoInputs,
    mlp,
    run,
    save_exported,
    save_legacy_pickle,
    save_pickled,
    save_scripted,
    save_state_dict,
    save_traced,
    small_cnn,
)

SCRIPT = TorchScriptRuntime()
EXPORT = TorchExportRuntime()
TRUSTED = PushOptions(trust_pickle=True)
RNG = np.random.default_rng(0)
DIGITS = RNG.standard_normal((5, 1, 28, 28)).astype(np.float32)
PHOTOS = RNG.standard_normal((5, 3, 32, 32)).astype(np.float32)
ROWS = RNG.standard_normal((5, 8)).astype(np.float32)
FEATURES = RNG.standard_normal((4, 4)).astype(np.float32)
BIAS = RNG.standard_normal((4, 3)).astype(np.float32)
VECTORS = RNG.standard_normal((4, 6)).astype(np.float32)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every model file the tests use, saved once per worker."""
    root = tmp_path_factory.mktemp("torch")
    return {
        "cnn.pt": save_scripted(small_cnn(), root / "cnn.pt"),
        "mlp.pt": save_traced(mlp(), [ROWS[:2]], root / "mlp.pt"),
        "two.pt": save_scripted(TwoInputs(), root / "two.pt"),
        "dict.pt": save_scripted(DictHeads(), root / "dict.pt"),
        "cnn.pt2": save_exported(small_cnn(3, 32), [PHOTOS[:2]], root / "cnn.pt2"),
        "static.pt2": save_exported(mlp(), [ROWS[:2]], root / "static.pt2", dynamic_batch=False),
        "two.pt2": save_exported(TwoInputs(), [FEATURES[:2], BIAS[:2]], root / "two.pt2"),
        "dict.pt2": save_exported(DictHeads(), [VECTORS[:2]], root / "dict.pt2"),
    }


@pytest.fixture
def sqlite_registry(home: Path) -> Iterator[Registry]:
    with Registry(Settings(home=home)) as registry:
        yield registry


def load(path: Path, options: PushOptions = TRUSTED) -> LoadedModel:
    """Inspect and load as a push and a later load would, metadata passed along."""
    runtime = SCRIPT if path.suffix == ".pt" else EXPORT
    info = runtime.inspect(path, options)
    return CheckedModel(runtime.load(path, LoadOptions(metadata=info.metadata, trust_pickle=True)))


def spec(name: str, shape: tuple[int, ...], datatype: DataType = DataType.FP32) -> TensorSpec:
    return TensorSpec(name, datatype, shape)


# --- TorchScript ------------------------------------------------------------------------------


def test_scripted_model_pushed_with_an_example_predicts_like_the_module(
    registry: Registry, files: dict[str, Path]
) -> None:
    version = registry.push(
        files["cnn.pt"], "cnn", example={"digits": DIGITS[:2]}, trust_pickle=True
    )

    assert version.format == "torchscript"
    assert version.signature == Signature(
        inputs=(spec("digits", (-1, 1, 28, 28)),), outputs=(spec("output", (-1, 10)),)
    )
    assert version.metadata["arguments"] == ["input"]  # nn.Sequential.forward(input)
    assert version.metadata["torch_version"] == torch.__version__
    model = registry.load("cnn")
    result = model.predict({"digits": DIGITS})
    np.testing.assert_allclose(result["output"], run(small_cnn(), DIGITS), rtol=1e-5, atol=1e-6)


def test_traced_model_through_the_cli_predicts_like_the_module_and_the_sdk(
    home: Path, tmp_path: Path, files: dict[str, Path]
) -> None:
    example, inputs, outputs = tmp_path / "example.npz", tmp_path / "in.npz", tmp_path / "out.npz"
    np.savez(example, input=ROWS[:1])
    np.savez(inputs, input=ROWS)

    pushed = run_cli(
        "push", files["mlp.pt"], "--name", "mlp", "--example", example, "--trust-pickle", "--json"
    )
    assert pushed.returncode == 0, pushed.stderr
    assert json.loads(pushed.stdout)["format"] == "torchscript"
    predicted = run_cli("predict", "mlp", "--input", inputs, "--output", outputs)
    assert predicted.returncode == 0, predicted.stderr

    with np.load(outputs) as saved:
        from_cli = saved["output"]
    np.testing.assert_allclose(from_cli, run(mlp(), ROWS), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(
        predict_in_process(home, "mlp", {"input": ROWS})["output"], from_cli
    )


def test_without_an_example_or_a_signature_the_cli_says_what_to_give(
    home: Path, files: dict[str, Path]
) -> None:
    result = run_cli("push", files["cnn.pt"], "--name", "cnn", "--trust-pickle")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: a TorchScript model does not record its inputs and outputs; give an example "
        "input with --example x.npz, or the signature with --signature sig.json"
    )


def test_a_declared_signature_is_put_in_forwards_order(files: dict[str, Path]) -> None:
    declared = Signature(
        inputs=(spec("bias", (-1, 3)), spec("features", (-1, 4))),
        outputs=(spec("scores", (-1, 3)), spec("total", (-1,))),
    )
    model = load(files["two.pt"], PushOptions(signature=declared, trust_pickle=True))

    assert [s.name for s in model.signature.inputs] == ["features", "bias"]
    result = model.predict({"bias": BIAS, "features": FEATURES})
    scores, total = run(TwoInputs(), FEATURES, BIAS)
    np.testing.assert_allclose(result["scores"], scores, rtol=1e-6)
    np.testing.assert_allclose(result["total"], total, rtol=1e-6)


@pytest.mark.parametrize(
    ("example", "message"),
    [
        (
            {"a": FEATURES, "features": BIAS},
            r"forward takes 'features', 'bias', but .* 'a', 'features'",
        ),
        ({"features": FEATURES.astype(np.uint16), "bias": BIAS}, r"'features' is uint16"),
        ({"features": FEATURES[:, :3], "bias": BIAS}, r"could not run on the example: .*mat1"),
    ],
    ids=["names", "dtype", "values"],
)
def test_an_example_that_does_not_fit_forward(
    files: dict[str, Path], example: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        SCRIPT.inspect(files["two.pt"], PushOptions(example=example, trust_pickle=True))


# --- torch.export -----------------------------------------------------------------------------


def test_exported_program_with_a_dynamic_batch(files: dict[str, Path]) -> None:
    info = EXPORT.inspect(files["cnn.pt2"], TRUSTED)
    assert info.signature == Signature(
        inputs=(spec("input", (-1, 3, 32, 32)),), outputs=(spec("output", (-1, 10)),)
    )
    model = CheckedModel(
        EXPORT.load(files["cnn.pt2"], LoadOptions(metadata=info.metadata, trust_pickle=True))
    )

    for rows in (1, 5):
        result = model.predict({"input": PHOTOS[:rows]})["output"]
        np.testing.assert_allclose(
            result, run(small_cnn(3, 32), PHOTOS[:rows]), rtol=1e-5, atol=1e-6
        )


def test_exported_program_with_static_shapes(files: dict[str, Path]) -> None:
    model = load(files["static.pt2"])
    assert model.signature == Signature(
        inputs=(spec("input", (2, 8)),), outputs=(spec("output", (2, 3)),)
    )
    np.testing.assert_allclose(
        model.predict({"input": ROWS[:2]})["output"], run(mlp(), ROWS[:2]), rtol=1e-5, atol=1e-6
    )
    with pytest.raises(InvalidInput, match=r"expected shape \[2, 8\], received \[3, 8\]"):
        model.predict({"input": ROWS[:3]})


class Elementwise(nn.Module):
    """One output per input, of the same dtype."""

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(t if t.dtype == torch.bool else t + 1 for t in tensors)


def test_every_served_dtype_round_trips_through_an_exported_program(tmp_path: Path) -> None:
    arrays = [
        np.arange(6).reshape(2, 3).astype(dtype)
        for dtype in (
            np.float32,
            np.float64,
            np.float16,
            np.int8,
            np.int16,
            np.int32,
            np.int64,
            np.uint8,
        )
    ]
    arrays.append(np.array([[True, False, True]] * 2))
    path = save_exported(Elementwise(), arrays, tmp_path / "dtypes.pt2", dynamic_batch=False)

    model = load(path)

    datatypes = [DataType.from_numpy(array.dtype) for array in arrays]
    assert [s.datatype for s in model.signature.inputs] == datatypes
    assert [s.datatype for s in model.signature.outputs] == datatypes
    names = [s.name for s in model.signature.inputs]
    result = model.predict(dict(zip(names, arrays, strict=True)))
    for (name, output), array in zip(result.items(), arrays, strict=True):
        assert output.dtype == array.dtype, name
        np.testing.assert_array_equal(output, array if array.dtype == bool else array + 1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.complex64])
def test_dtypes_modelport_cannot_serve(tmp_path: Path, dtype: torch.dtype) -> None:
    path = tmp_path / "odd.pt2"
    program = torch.export.export(Elementwise(), (torch.ones(2, 2, dtype=dtype),))
    torch.export.save(program, str(path))
    with pytest.raises(UnsupportedFormat, match=rf"input 'tensors_0' is {str(dtype)[6:]}, which"):
        EXPORT.inspect(path, TRUSTED)


def test_a_declared_signature_must_keep_the_programs_names(files: dict[str, Path]) -> None:
    narrowed = Signature(
        inputs=(spec("input", (4, 3, 32, 32)),), outputs=(spec("output", (4, 10)),)
    )
    assert (
        EXPORT.inspect(
            files["cnn.pt2"], PushOptions(signature=narrowed, trust_pickle=True)
        ).signature
        == narrowed
    )
    renamed = Signature(inputs=(spec("image", (-1, 3, 32, 32)),), outputs=narrowed.outputs)
    with pytest.raises(InvalidInput, match=r"own inputs: 'input' \(FP32\)"):
        EXPORT.inspect(files["cnn.pt2"], PushOptions(signature=renamed, trust_pickle=True))


# --- both formats -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["two.pt", "two.pt2"])
def test_two_inputs_and_a_tuple_of_outputs(files: dict[str, Path], name: str) -> None:
    options = PushOptions(example={"bias": BIAS[:2], "features": FEATURES[:2]}, trust_pickle=True)
    model = load(files[name], options)

    assert model.signature == Signature(
        inputs=(spec("features", (-1, 4)), spec("bias", (-1, 3))),
        outputs=(spec("output_0", (-1, 3)), spec("output_1", (-1,))),
    )
    scores, total = run(TwoInputs(), FEATURES, BIAS)
    result = model.predict({"features": FEATURES, "bias": BIAS})
    np.testing.assert_allclose(result["output_0"], scores, rtol=1e-6)
    np.testing.assert_allclose(result["output_1"], total, rtol=1e-6)
    only = model.predict({"features": FEATURES, "bias": BIAS}, outputs=["output_1"])
    assert list(only) == ["output_1"]
    with pytest.raises(InvalidInput, match=r"unknown output 'scores'; the model gives 'output_0'"):
        model.predict({"features": FEATURES, "bias": BIAS}, outputs=["scores"])


@pytest.mark.parametrize(
    ("name", "structure"),
    [
        ("cnn.pt", "tensor"),
        ("two.pt", "tuple"),
        ("dict.pt", "dict"),
        ("cnn.pt2", "tensor"),
        ("two.pt2", "tuple"),
        ("dict.pt2", "dict"),
    ],
)
def test_the_output_structure_is_recorded(
    files: dict[str, Path], name: str, structure: str
) -> None:
    examples = {
        "cnn.pt": {"image": DIGITS[:2]},
        "two.pt": {"features": FEATURES, "bias": BIAS},
        "dict.pt": {"x": VECTORS},
    }
    options = PushOptions(example=examples.get(name), trust_pickle=True)
    runtime = SCRIPT if name.endswith(".pt") else EXPORT
    assert runtime.inspect(files[name], options).metadata["output_structure"] == structure


def test_an_export_archive_named_otherwise_is_served_with_format(
    sqlite_registry: Registry, files: dict[str, Path], tmp_path: Path
) -> None:
    path = tmp_path / "exported.pt"
    path.write_bytes(files["cnn.pt2"].read_bytes())
    with pytest.raises(
        InvalidModel, match=r"exported\.pt is a torch\.export archive .* --format torch_export"
    ):
        sqlite_registry.push(path, "photos", trust_pickle=True)

    sqlite_registry.push(path, "photos", format="torch_export", trust_pickle=True)

    result = sqlite_registry.load("photos").predict({"input": PHOTOS[:2]})
    np.testing.assert_allclose(
        result["output"], run(small_cnn(3, 32), PHOTOS[:2]), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("name", ["dict.pt", "dict.pt2"])
def test_dict_outputs_are_named_by_their_keys(files: dict[str, Path], name: str) -> None:
    model = load(files[name], PushOptions(example={"x": VECTORS[:2]}, trust_pickle=True))

    assert model.signature.output_names() == ["logits", "embedding"]
    result = model.predict({"x": VECTORS})
    expected = run(DictHeads(), VECTORS)
    for key in ("logits", "embedding"):
        np.testing.assert_allclose(result[key], expected[key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("name", "inputs", "message"),
    [
        ("two.pt", {"features": FEATURES[:, :3], "bias": BIAS}, r"expected shape \[-1, 4\]"),
        (
            "two.pt",
            {"features": FEATURES, "bias": BIAS.astype(np.float64)},
            "expected datatype FP32",
        ),
        (
            "two.pt2",
            {"features": FEATURES[:2], "bias": BIAS[:3]},
            r"could not run on these inputs: Guard failed",
        ),
    ],
    ids=["shape", "dtype", "guard"],
)
def test_inputs_the_model_cannot_take(
    files: dict[str, Path], name: str, inputs: dict[str, Any], message: str
) -> None:
    options = PushOptions(example={"features": FEATURES[:2], "bias": BIAS[:2]}, trust_pickle=True)
    model = load(files[name], options)
    with pytest.raises(InvalidInput, match=message) as raised:
        model.predict(inputs)
    assert "\n" not in str(raised.value)


def test_torchscript_errors_are_cut_to_one_line(files: dict[str, Path]) -> None:
    loose = Signature(
        inputs=(spec("features", (-1, -1)), spec("bias", (-1, -1))),
        outputs=(spec("scores", (-1, 3)), spec("total", (-1,))),
    )
    model = load(files["two.pt"], PushOptions(signature=loose, trust_pickle=True))
    with pytest.raises(InvalidInput) as raised:
        model.predict({"features": FEATURES[:, :3], "bias": BIAS})
    assert str(raised.value).startswith("the model could not run on these inputs: mat1 and mat2")
    assert "\n" not in str(raised.value)


def test_read_only_and_strided_inputs(files: dict[str, Path]) -> None:
    model = load(files["cnn.pt2"])
    frozen = PHOTOS.copy()
    frozen.flags.writeable = False
    reversed_rows = PHOTOS[::-1]
    expected = run(small_cnn(3, 32), PHOTOS)
    np.testing.assert_allclose(
        model.predict({"input": frozen})["output"], expected, rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        model.predict({"input": reversed_rows})["output"], expected[::-1], rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("name", ["cnn.pt", "cnn.pt2"])
def test_concurrent_predictions_from_many_threads(files: dict[str, Path], name: str) -> None:
    images = DIGITS if name == "cnn.pt" else PHOTOS
    model = load(files[name], PushOptions(example={"image": DIGITS[:2]}, trust_pickle=True))
    expected = run(small_cnn() if name == "cnn.pt" else small_cnn(3, 32), images)
    key = model.signature.inputs[0].name

    def predict(index: int) -> np.ndarray[Any, Any]:
        row = index % len(images)
        return model.predict({key: images[row : row + 1]})["output"][0]

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(predict, range(200)))
    for index, result in enumerate(results):
        np.testing.assert_allclose(result, expected[index % len(images)], rtol=1e-5, atol=1e-6)


def test_intra_op_threads_are_set_once_per_process(
    files: dict[str, Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(pytorch_runtime, "_TORCH_THREADS", ProcessThreads("PyTorch"))
    before = torch.get_num_threads()
    try:
        EXPORT.load(files["static.pt2"], LoadOptions(intra_op_threads=1, trust_pickle=True))
        assert torch.get_num_threads() == 1
        with caplog.at_level(logging.WARNING, logger="modelport.runtimes.torch.runtime"):
            EXPORT.load(files["static.pt2"], LoadOptions(intra_op_threads=2, trust_pickle=True))
        assert torch.get_num_threads() == 1
        assert "already 1; a model asking for 2 runs with 1" in caplog.text
    finally:
        torch.set_num_threads(before)
    with pytest.raises(InvalidInput, match="intra_op_threads must be 0"):
        EXPORT.load(files["static.pt2"], LoadOptions(intra_op_threads=-1, trust_pickle=True))


# --- detection and refusals -------------------------------------------------------------------


def test_detect(files: dict[str, Path], tmp_path: Path) -> None:
    text = tmp_path / "notes.pt"
    text.write_text("not a model")
    anything = tmp_path / "anything.pt2"
    anything.write_bytes(b"\x00" * 16)
    table = default_runtimes()

    assert table.detect(files["cnn.pt"]).format == "torchscript"
    assert table.detect(files["cnn.pt2"]).format == "torch_export"
    assert table.detect(anything).format == "torch_export"  # broken, as inspect will say
    assert not SCRIPT.detect(text)
    assert not SCRIPT.detect(files["cnn.pt2"])
    assert not EXPORT.detect(files["cnn.pt"])
    assert not SCRIPT.detect(tmp_path)
    assert not EXPORT.detect(tmp_path / "missing.pt2")
    assert table.get("torchscript").extra == table.get("torch_export").extra == "torch"


@pytest.mark.parametrize(
    "save",
    [save_pickled, save_state_dict, save_legacy_pickle],
    ids=["module", "state_dict", "legacy"],
)
@pytest.mark.parametrize("trust", [False, True])
def test_torch_save_files_are_refused(
    sqlite_registry: Registry, tmp_path: Path, save: Callable[[nn.Module, Path], Path], trust: bool
) -> None:
    path = save(mlp(), tmp_path / "model.pt")
    assert default_runtimes().detect(path).format == "torchscript"
    with pytest.raises(InvalidModel) as raised:
        sqlite_registry.push(path, "mlp", example={"input": ROWS}, trust_pickle=trust)
    assert str(raised.value).startswith(
        "model.pt is a pickled PyTorch object (torch.save), and loading it runs code from the "
        "file; export it with torch.jit.script/trace + torch.jit.save, or torch.export + "
        "torch.export.save, or convert to ONNX; a state_dict alone has no architecture to serve"
    )
    assert sqlite_registry.list_models() == []


@pytest.mark.parametrize("name", ["cnn.pt", "cnn.pt2"])
def test_untrusted_files_are_refused_before_torch_opens_them(
    sqlite_registry: Registry, files: dict[str, Path], name: str
) -> None:
    with pytest.raises(
        InvalidModel, match=r"can run code from the file, .* only with --trust-pickle .* ONNX"
    ):
        sqlite_registry.push(files[name], "cnn", example={"input": DIGITS[:1]})
    assert sqlite_registry.list_models() == []
    runtime = SCRIPT if name == "cnn.pt" else EXPORT
    with pytest.raises(InvalidModel, match="--trust-pickle"):
        runtime.load(files[name], LoadOptions())


def _rewrite_program(source: Path, target: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for item in old.infolist():
            data = old.read(item.filename)
            if item.filename.endswith("models/model.json"):
                program = json.loads(data)
                edit(program)
                data = json.dumps(program).encode()
            new.writestr(item, data)
    return target


def test_why_exported_programs_need_trust(
    sqlite_registry: Registry, files: dict[str, Path], tmp_path: Path
) -> None:
    marker = tmp_path / "ran"

    def plant(program: dict[str, Any]) -> None:
        # A symbolic batch size is parsed with sympy.sympify, which evaluates Python.
        size = program["graph_module"]["graph"]["tensor_values"]["features"]["sizes"][0]
        expression = size["as_expr"]["expr_str"]
        size["as_expr"]["expr_str"] = (
            f"__import__('pathlib').Path({str(marker)!r}).touch() or {expression}"
        )

    path = _rewrite_program(files["two.pt2"], tmp_path / "crafted.pt2", plant)

    with pytest.raises(InvalidModel, match="--trust-pickle"):
        sqlite_registry.push(path, "crafted")
    assert not marker.exists()
    # What the refusal protects from: torch.export.load itself runs the file's code.
    torch.export.load(str(path))
    assert marker.exists()


def _damaged(files: dict[str, Path], tmp_path: Path, kind: str) -> Path:
    if kind == "not-a-zip":
        path = tmp_path / "model.pt2"
        path.write_bytes(RNG.bytes(2048))
    elif kind == "truncated":
        path = tmp_path / "model.pt"
        content = files["cnn.pt"].read_bytes()
        path.write_bytes(content[: len(content) // 2])
    elif kind in ("other-zip", "incomplete", "aoti"):
        path = tmp_path / "model.pt2"
        entries = {
            "other-zip": ["model/readme.txt"],
            "incomplete": ["model/archive_format", "model/models/model.json"],
            "aoti": ["model/archive_format", "model/data/aotinductor/model/model.so"],
        }[kind]
        with zipfile.ZipFile(path, "w") as archive:
            for entry in entries:
                archive.writestr(entry, "pt2")
    elif kind == "bad-json":
        path = tmp_path / "model.pt2"
        with zipfile.ZipFile(files["cnn.pt2"]) as old, zipfile.ZipFile(path, "w") as new:
            for item in old.infolist():
                damaged = item.filename.endswith("models/model.json")
                new.writestr(item, b"{not json" if damaged else old.read(item.filename))
    elif kind == "bad-code":
        path = tmp_path / "model.pt"
        with zipfile.ZipFile(files["cnn.pt"]) as old, zipfile.ZipFile(path, "w") as new:
            for item in old.infolist():
                damaged = "/code/" in item.filename and item.filename.endswith(".py")
                new.writestr(item, b"def forward(:\n" if damaged else old.read(item.filename))
    else:  # a TorchScript archive named like an exported program
        path = tmp_path / "model.pt2"
        path.write_bytes(files["cnn.pt"].read_bytes())
    return path


@pytest.mark.parametrize(
    ("kind", "error", "message"),
    [
        (
            "not-a-zip",
            InvalidModel,
            r"model\.pt2 is not a PyTorch archive \(not a zip file, or truncated\)",
        ),
        (
            "truncated",
            InvalidModel,
            r"model\.pt is not a PyTorch archive \(not a zip file, or truncated\)",
        ),
        ("other-zip", InvalidModel, r"zip archive but not a PyTorch model"),
        (
            "incomplete",
            InvalidModel,
            r"not a complete torch\.export archive: no archive_version, \.data/version",
        ),
        ("aoti", UnsupportedFormat, r"is an AOTInductor package"),
        ("bad-json", InvalidModel, r"models/model\.json is damaged"),
        ("bad-code", InvalidModel, r"model\.pt could not be loaded as TorchScript"),
        ("misnamed", InvalidModel, r"is a TorchScript archive \(torch\.jit\.save\): name it \.pt"),
    ],
)
def test_broken_files_are_refused_and_nothing_is_stored(
    sqlite_registry: Registry,
    files: dict[str, Path],
    tmp_path: Path,
    kind: str,
    error: type[ModelportError],
    message: str,
) -> None:
    path = _damaged(files, tmp_path, kind)
    with pytest.raises(error, match=message) as raised:
        sqlite_registry.push(path, "broken", example={"input": DIGITS[:1]}, trust_pickle=True)
    assert "\n" not in str(raised.value)
    assert sqlite_registry.list_models() == []


_WITHOUT_TORCH = """
import json, sys
sys.modules["torch"] = None  # as an install without modelport[torch] looks to an import
import numpy as np
from modelport import Registry, Settings
from modelport.errors import ModelportError

home, *paths = sys.argv[1:]
outcomes = []
with Registry(Settings(home=home)) as registry:
    for path in paths:
        for trust in (True, False):
            try:
                registry.push(path, "m", example={"input": np.ones((1, 8), np.float32)},
                              trust_pickle=trust)
                outcomes.append("pushed")
            except ModelportError as exc:
                outcomes.append(f"{type(exc).__name__}: {exc}")
    stored = [model.name for model in registry.list_models()]
print(json.dumps({"outcomes": outcomes, "stored": stored}))
"""


def test_without_pytorch_the_error_names_the_extra(
    home: Path, files: dict[str, Path], tmp_path: Path
) -> None:
    pickled = save_state_dict(mlp(), tmp_path / "weights.pt")
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _WITHOUT_TORCH,
            str(home),
            str(files["mlp.pt"]),
            str(files["static.pt2"]),
            str(pickled),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    missing = "MissingDependency: serving PyTorch models needs PyTorch, which is missing: "
    missing += "pip install 'modelport[torch]'"
    script_untrusted, export_untrusted = report["outcomes"][1], report["outcomes"][3]
    assert report["outcomes"][0] == report["outcomes"][2] == missing
    assert script_untrusted.startswith("InvalidModel: mlp.pt: torch.jit.load can run code")
    assert export_untrusted.startswith("InvalidModel: static.pt2: torch.export.load can run code")
    assert report["outcomes"][4] == report["outcomes"][5]
    assert report["outcomes"][4].startswith("InvalidModel: weights.pt is a pickled PyTorch object")
    assert report["stored"] == []


# --- serving ----------------------------------------------------------------------------------


def _infer(
    client: httpx.Client, url: str, name: str, array: np.ndarray[Any, Any]
) -> np.ndarray[Any, Any]:
    body = {
        "inputs": [
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": "FP32",
                "data": array.ravel().tolist(),
            }
        ]
    }
    response = client.post(url, json=body)
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    assert output["name"] == "output" and output["datatype"] == "FP32"
    return np.array(output["data"], np.float32).reshape(output["shape"])


def test_one_model_of_each_format_served_over_v2_rest(
    home: Path, tmp_path: Path, files: dict[str, Path]
) -> None:
    # The CLI's push is tested above; pushing in-process spares two torch imports here.
    with Registry(Settings(home=home)) as registry:
        registry.push(files["cnn.pt"], "digits", example={"image": DIGITS[:2]}, trust_pickle=True)
        registry.push(files["cnn.pt2"], "photos", trust_pickle=True)
    config = tmp_path / "serve.toml"
    # One worker, a batching window and no inline path: a burst must merge into batches.
    config.write_text(
        "[defaults]\ninstances = 1\nthreads = 1\nmax_queue_delay_ms = 50\ninline_below_us = 0\n"
    )
    served = {"digits": ("image", DIGITS), "photos": ("input", PHOTOS)}
    expected = {
        name: predict_in_process(home, name, {key: images})["output"]
        for name, (key, images) in served.items()
    }
    np.testing.assert_allclose(expected["digits"], run(small_cnn(), DIGITS), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        expected["photos"], run(small_cnn(3, 32), PHOTOS), rtol=1e-5, atol=1e-6
    )

    with (
        running_server(home, list(served), ["--config", str(config), "--no-grpc"]) as server,
        httpx.Client(timeout=30, limits=httpx.Limits(max_connections=32)) as client,
    ):
        for name, (key, images) in served.items():
            url = f"{server.http_url}/v2/models/{name}/infer"
            whole = _infer(client, url, key, images)
            np.testing.assert_allclose(whole, expected[name], rtol=1e-5, atol=1e-5)

            def one_row(index: int, url: str = url, key: str = key, images: Any = images) -> Any:
                return _infer(client, url, key, images[index % 5 : index % 5 + 1])

            with ThreadPoolExecutor(max_workers=16) as pool:
                rows = list(pool.map(one_row, range(32)))
            for index, row in enumerate(rows):
                np.testing.assert_allclose(row[0], expected[name][index % 5], rtol=1e-5, atol=1e-5)
        metrics = client.get(f"{server.http_url}/metrics").text

    for name in served:
        merged = _batches_above_one(metrics, f'model="{name}"')
        assert merged > 0, f"no batch of {name} held more than one request"
    assert server.proc.returncode == 0


def _batches_above_one(metrics: str, selector: str) -> float:
    counts = {}
    for line in metrics.splitlines():
        if line.startswith("modelport_batch_size_bucket") and selector in line:
            counts[line.split('le="')[1].split('"')[0]] = float(line.rsplit(" ", 1)[1])
    return counts["+Inf"] - counts["1.0"]
