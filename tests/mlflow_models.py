"""MLflow model directories for the tests, written at test time.

With pandas installed, the directories are written by MLflow's own ``save_model`` functions
(``mlflow.sklearn``, ``mlflow.onnx``, ``mlflow.pyfunc``): those modules import pandas, which
``mlflow-skinny`` does not install. Without pandas, the ``MLmodel`` file is still written by
MLflow (``mlflow.models.Model``, which needs no pandas), with the flavors, files and
signature laid out as those ``save_model`` functions of MLflow 3 write them (the model file
by skops, cloudpickle or onnx, as MLflow does); only the signature's JSON is written here,
since ``mlflow.models.signature`` imports pandas too.
"""

from __future__ import annotations

import importlib.util
import json
import platform
import shutil
from pathlib import Path
from typing import Any

import numpy as np

HAVE_PANDAS = importlib.util.find_spec("pandas") is not None
"""Whether MLflow's flavor modules (and so the pyfunc path) work here."""

# What mlflow.models.infer_signature records for a float32 [n, 4] input and int64 [n] labels.
IRIS_SIGNATURE = {
    "inputs": [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 4]}}],
    "outputs": [{"type": "tensor", "tensor-spec": {"dtype": "int64", "shape": [-1]}}],
}


def write_mlmodel(
    directory: Path, flavors: dict[str, dict[str, Any]], signature: dict[str, Any] | None = None
) -> Path:
    """``directory/MLmodel`` as MLflow writes it, with ``flavors`` and a signature.

    ``signature`` holds ``inputs``/``outputs`` lists, stored as MLflow stores them: JSON text.
    """
    import yaml
    from mlflow.models import Model

    model = Model()
    for name, configuration in flavors.items():
        model.add_flavor(name, **configuration)
    document = model.to_dict()
    if signature is not None:
        document["signature"] = {
            "inputs": json.dumps(signature["inputs"]),
            "outputs": json.dumps(signature["outputs"]),
            "params": None,
        }
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "MLmodel").write_text(yaml.safe_dump(document, default_flow_style=False))
    return directory


def _python_function(loader_module: str, **files: str) -> dict[str, Any]:
    return {
        "loader_module": loader_module,
        "python_version": platform.python_version(),
        "env": {"conda": "conda.yaml", "virtualenv": "python_env.yaml"},
        **files,
    }


def save_sklearn(estimator: Any, directory: Path, serialization_format: str) -> Path:
    """An ``mlflow.sklearn.save_model`` directory (``skops`` or ``cloudpickle``).

    ``estimator`` may be any picklable object for ``cloudpickle`` (e.g. a malicious one).
    """
    if HAVE_PANDAS and hasattr(estimator, "predict"):
        import mlflow.sklearn
        from mlflow.models import infer_signature

        x = np.zeros((2, 4), np.float32)
        mlflow.sklearn.save_model(
            estimator,
            str(directory),
            serialization_format=serialization_format,
            signature=infer_signature(x, estimator.predict(x)),
        )
        return directory
    import sklearn

    name = "model.skops" if serialization_format == "skops" else "model.pkl"
    directory.mkdir(parents=True)
    if serialization_format == "skops":
        import skops.io

        skops.io.dump(estimator, directory / name)
    else:
        import cloudpickle

        (directory / name).write_bytes(cloudpickle.dumps(estimator))
    flavors = {
        "python_function": _python_function(
            "mlflow.sklearn", model_path=name, predict_fn="predict"
        ),
        "sklearn": {
            "pickled_model": name,
            "sklearn_version": sklearn.__version__,
            "serialization_format": serialization_format,
            "code": None,
        },
    }
    return write_mlmodel(directory, flavors, IRIS_SIGNATURE)


def save_onnx(onnx_file: Path, directory: Path) -> Path:
    """An ``mlflow.onnx.save_model`` directory holding ``onnx_file`` as ``model.onnx``."""
    import onnx

    if HAVE_PANDAS:
        import mlflow.onnx

        mlflow.onnx.save_model(onnx.load(str(onnx_file)), str(directory))
        return directory
    directory.mkdir(parents=True)
    shutil.copyfile(onnx_file, directory / "model.onnx")
    flavors = {
        "python_function": _python_function("mlflow.onnx", data="model.onnx"),
        "onnx": {
            "onnx_version": onnx.__version__,
            "data": "model.onnx",
            "providers": ["CUDAExecutionProvider", "CPUExecutionProvider"],
            "code": None,
        },
    }
    return write_mlmodel(directory, flavors)


def save_python_model(python_model: Any, directory: Path) -> Path:
    """An ``mlflow.pyfunc.save_model(python_model=...)`` directory (cloudpickled model).

    Without pandas, ``python_model`` is cloudpickled as ``python_model.pkl`` under the same
    ``MLmodel`` (enough for the refusals, which never unpickle it).
    """
    if HAVE_PANDAS and hasattr(python_model, "predict"):
        import mlflow.pyfunc

        mlflow.pyfunc.save_model(str(directory), python_model=python_model)
        return directory
    import cloudpickle

    directory.mkdir(parents=True)
    (directory / "python_model.pkl").write_bytes(cloudpickle.dumps(python_model))
    flavors = {
        "python_function": _python_function(
            "mlflow.pyfunc.model",
            python_model="python_model.pkl",
            cloudpickle_version=cloudpickle.__version__,
        )
    }
    return write_mlmodel(directory, flavors)
