"""The gradient-boosting runtimes: XGBoost models (``.json``/``.ubj``) and LightGBM text models.

Both are tabular (``runtimes.sklearn.tabular``): one input ``input`` ``[-1, n_features]`` of
FP32 for XGBoost (which computes in float32) and FP64 for LightGBM (which computes in double,
so no value is rounded on the way in); an ``--example`` or ``--signature`` may choose the
other.
The outputs follow the objective the model was trained with:

- binary classification: ``label`` INT64 ``[-1]`` (1 where the probability of class 1 is
  above 0.5) and ``probabilities`` FP32 ``[-1, 2]``;
- multiclass: ``label`` INT64 ``[-1]`` (the most probable class) and ``probabilities``
  FP32 ``[-1, n_classes]``;
- regression: ``prediction`` ``[-1]`` (``[-1, n_targets]`` for several targets);
- anything else (ranking, counts, raw scores): ``prediction`` ``[-1, -1]`` as the booster
  gives it.

Labels are class indices: boosters know classes only as 0..n-1. ``prediction`` is FP32 for
XGBoost and FP64 for LightGBM, as each computes it.
"""

from __future__ import annotations

import json
import re
from itertools import islice
from pathlib import Path

from modelport.errors import InvalidInput, InvalidModel
from modelport.runtimes.base import LoadOptions, ModelInfo, PushOptions
from modelport.runtimes.boosting.model import Array, Booster, Task, softmax
from modelport.runtimes.sklearn.tabular import (
    TabularModel,
    import_framework,
    resolve_signature,
    short_message,
    single_file,
    thread_count,
)
from modelport.types import DataType, Signature

__all__ = ["LightGBMRuntime", "XGBoostRuntime"]


# XGBoost writes "learner" as the first key; a pretty-printer may add whitespace.
_XGBOOST_JSON = re.compile(rb'\A\s*\{\s*"learner"\s*:')
_LIGHTGBM_TEXT = re.compile(rb"\Atree\r?\nversion=")
_LIGHTGBM_REGRESSION = frozenset(
    {"regression", "regression_l1", "huber", "fair", "poisson", "quantile", "mape", "gamma",
     "tweedie"}
)  # fmt: skip


class _BoosterRuntime:
    """Inspecting and loading, shared by the booster formats; each opens its own files."""

    name = ""
    computes_in = DataType.FP32
    """The default input and ``prediction`` datatype."""

    def inspect(self, path: Path, options: PushOptions) -> ModelInfo:
        """Load the booster and describe it.

        Raises:
            MissingDependency: the framework is not installed.
            InvalidModel: the file is truncated, corrupt, or not a model of this format.
            InvalidInput: an example or --signature that does not fit.
        """
        booster = self._open(path, 0)
        signature = self._signature(booster, options)
        metadata = {**booster.metadata, "signature": signature.to_dict()}
        return ModelInfo(single_file(path), signature, metadata)

    def load(self, path: Path, options: LoadOptions) -> TabularModel:
        """Load the booster for inference, with the signature recorded at push time."""
        booster = self._open(path, thread_count(options))
        recorded = options.metadata.get("signature")
        if recorded:
            return booster.build(Signature.from_dict(recorded))
        return booster.build(self._signature(booster, PushOptions()))

    def _signature(self, booster: Booster, options: PushOptions) -> Signature:
        outputs = booster.task.outputs(self.computes_in)
        signature = resolve_signature(
            options, self.name, outputs, booster.width, booster.build,
            learn=False, datatype=self.computes_in,
        )  # fmt: skip
        if signature.inputs[0].datatype is DataType.BYTES:
            raise InvalidInput(f"{self.name} models take numbers; the input cannot be BYTES")
        return signature

    def _open(self, path: Path, threads: int) -> Booster:
        raise NotImplementedError


class XGBoostRuntime(_BoosterRuntime):
    """The ``xgboost`` format: a model saved by ``Booster.save_model`` or
    ``XGBModel.save_model`` as JSON (a ``.json`` file whose first key is ``learner``) or UBJSON
    (``.ubj``).

    Predicts with ``Booster.inplace_predict``, which is thread-safe and releases the GIL, up
    to the best iteration when early stopping recorded one (as XGBoost's scikit-learn wrapper
    does). ``intra_op_threads`` sets XGBoost's ``nthread``.
    """

    format = "xgboost"
    extra = "xgboost"
    name = "XGBoost"
    computes_in = DataType.FP32

    def detect(self, path: Path) -> bool:
        """``.ubj`` files, and ``.json`` files that start like an XGBoost model (first 1 KB)."""
        suffix = path.suffix.lower()
        if suffix == ".ubj":
            return path.is_file()
        return suffix == ".json" and _XGBOOST_JSON.match(_head(path, 1024)) is not None

    def _open(self, path: Path, threads: int) -> Booster:
        xgboost = import_framework("xgboost", "XGBoost models needs xgboost", "xgboost")
        try:
            booster = xgboost.Booster(model_file=str(path))
            learner = json.loads(booster.save_config())["learner"]
            objective = str(learner["objective"]["name"])
            params = learner["learner_model_param"]
            classes, targets = int(params["num_class"]), int(params.get("num_target", 1))
        except (ValueError, OSError, KeyError, TypeError) as exc:  # XGBoostError: ValueError
            message = f"{path.name} is not a valid XGBoost model: {short_message(exc)}"
            raise InvalidModel(message) from exc
        if threads:
            booster.set_param({"nthread": threads})
        best = booster.attr("best_iteration")
        iterations = (0, 0) if best is None else (0, int(best) + 1)
        # multi:softmax predicts class indices; its margins give what softprob would.
        margin = objective == "multi:softmax"

        def predict(rows: Array) -> Array:
            value: Array = booster.inplace_predict(
                rows,
                iteration_range=iterations,
                predict_type="margin" if margin else "value",
                validate_features=False,
            )
            return softmax(value) if margin else value

        if objective == "binary:logistic":
            task = Task("binary")
        elif objective in ("multi:softprob", "multi:softmax"):
            task = Task("multiclass", classes=classes)
        else:
            task = Task("regression" if objective.startswith("reg:") else "raw", targets=targets)
        metadata = {
            "xgboost_version": xgboost.__version__,
            "objective": objective,
            "num_features": booster.num_features(),
            "best_iteration": None if best is None else int(best),
        }
        return Booster(predict, (ValueError,), task, booster.num_features(), metadata)


class LightGBMRuntime(_BoosterRuntime):
    """The ``lightgbm`` format: a text model saved by ``Booster.save_model`` (e.g.
    ``model.txt``): a file whose first lines are ``tree`` and ``version=...``.

    ``predict`` takes no lock: LightGBM's C API guards a booster for concurrent predictions,
    and every call here uses the same iterations, the case LightGBM's maintainers call
    thread-safe (LightGBM issues #666 and #6142). ``intra_op_threads`` sets ``num_threads``.
    """

    format = "lightgbm"
    extra = "lightgbm"
    name = "LightGBM"
    computes_in = DataType.FP64

    def detect(self, path: Path) -> bool:
        """Files whose first bytes are the ``tree`` and ``version=`` lines, whatever the suffix."""
        return _LIGHTGBM_TEXT.match(_head(path, 32)) is not None

    def _open(self, path: Path, threads: int) -> Booster:
        lightgbm = import_framework("lightgbm", "LightGBM models needs lightgbm", "lightgbm")
        errors = (lightgbm.basic.LightGBMError, ValueError)
        try:
            booster = lightgbm.Booster(model_file=str(path))
        except (*errors, OSError) as exc:
            message = f"{path.name} is not a valid LightGBM model: {short_message(exc)}"
            raise InvalidModel(message) from exc
        objective = _lightgbm_objective(path)
        name = objective.split(" ", 1)[0]
        if name == "binary":
            task = Task("binary")
        elif name in ("multiclass", "multiclassova"):
            task = Task("multiclass", classes=booster.num_model_per_iteration())
        else:
            task = Task("regression" if name in _LIGHTGBM_REGRESSION else "raw")
        options = {"num_threads": threads} if threads else {}

        def predict(rows: Array) -> Array:
            value: Array = booster.predict(rows, **options)
            return value

        metadata = {
            "lightgbm_version": lightgbm.__version__,
            "objective": objective,
            "num_features": booster.num_feature(),
        }
        return Booster(predict, errors, task, booster.num_feature(), metadata)


def _head(path: Path, size: int) -> bytes:
    try:
        with path.open("rb") as handle:
            return handle.read(size)
    except OSError:  # a directory, or unreadable: not ours to claim
        return b""


def _lightgbm_objective(path: Path) -> str:
    """The ``objective=`` line of the model's header, e.g. ``multiclass num_class:3``."""
    with path.open("rb") as handle:
        for line in islice(handle, 64):
            if line.startswith(b"objective="):
                return line.removeprefix(b"objective=").decode("utf-8", "replace").strip()
            if not line.strip():
                break
    return ""
