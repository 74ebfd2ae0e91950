"""The scikit-learn runtimes: ``skops`` files (safe), and pickles (only when trusted).

Both serve any fitted estimator or pipeline with ``predict`` or ``transform`` through the
tabular contract (``runtimes.sklearn.tabular``): one 2-D input ``input``, FP32 ``[-1,
n_features_in_]`` unless an example or ``--signature`` says otherwise, and these outputs:

- classifiers: ``label`` ``[-1]`` (INT64 for integer classes, BYTES for strings, as
  ``predict`` gives them) and, when the model has ``predict_proba``, ``probabilities`` FP32
  ``[-1, n_classes]`` with columns in ``classes_`` order;
- regressors: ``prediction`` FP64 ``[-1]`` (``[-1, n_targets]`` for several targets);
- clusterers and outlier detectors: ``label`` INT64 ``[-1]``; other predictors:
  ``prediction`` FP64 ``[-1]``;
- transformers (no ``predict``): ``output`` FP64 ``[-1, -1]`` (sparse results densified).

A model fitted on a pandas DataFrame still takes one 2-D input, its columns in
``feature_names_in_`` order (recorded as ``feature_names``); the DataFrame is rebuilt for
scikit-learn when pandas is installed. Text pipelines take BYTES, e.g. ``[-1]`` learnt from
an ``--example``. Thread options are ignored: scikit-learn predicts in the calling thread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from modelport.errors import InvalidModel
from modelport.runtimes.base import LoadOptions, ModelInfo, PushOptions
from modelport.runtimes.sklearn.model import estimator_predictor
from modelport.runtimes.sklearn.tabular import (
    LABEL,
    OUTPUT,
    PREDICTION,
    PROBABILITIES,
    TabularModel,
    import_framework,
    resolve_signature,
    short_message,
    single_file,
)
from modelport.types import DataType, Signature, TensorSpec

__all__ = ["PickleRuntime", "SkopsRuntime", "describe", "read_estimator", "sklearn_model"]

_PICKLE_SUFFIXES = frozenset({".joblib", ".pkl", ".pickle"})
_NEEDS = "scikit-learn models needs scikit-learn and skops"
_LABEL_ESTIMATORS = frozenset({"clusterer", "outlier_detector"})


class SkopsRuntime:
    """The ``skops`` format: an estimator saved with ``skops.io.dump``.

    skops rebuilds only types it trusts (scikit-learn's and numpy's own, mostly). A file that
    holds other types is refused unless pushed with ``--trust-pickle``, since rebuilding them
    can run their code; those types are recorded as ``untrusted_types``.
    """

    format = "skops"
    extra = "sklearn"

    def detect(self, path: Path) -> bool:
        """Whether ``path`` is a ``.skops`` file. Never opens it."""
        return path.suffix.lower() == ".skops" and path.is_file()

    def inspect(self, path: Path, options: PushOptions) -> ModelInfo:
        """Load the estimator (safely) and describe it; see ``describe``.

        Raises:
            MissingDependency: scikit-learn or skops is not installed.
            InvalidModel: not a skops file, untrusted types without --trust-pickle, not a
                fitted estimator.
            InvalidInput: as for ``describe``.
        """
        estimator, untrusted = _read_skops(path, trusted=options.trust_pickle)
        signature, metadata = describe(estimator, options)
        return ModelInfo(single_file(path), signature, {**metadata, "untrusted_types": untrusted})

    def load(self, path: Path, options: LoadOptions) -> TabularModel:
        """Load the estimator; untrusted types only if the version was pushed trusting them."""
        estimator, _ = _read_skops(path, trusted=options.trust_pickle)
        return sklearn_model(estimator, options)


class PickleRuntime:
    """The ``sklearn_pickle`` format: an estimator saved with joblib or pickle.

    Loading a pickle runs code from the file, so nothing is unpickled unless the version is
    pushed with ``--trust-pickle``; ``load`` refuses again if the record says it was not.
    """

    format = "sklearn_pickle"
    extra = "sklearn"

    def detect(self, path: Path) -> bool:
        """Whether ``path`` is a ``.joblib``, ``.pkl`` or ``.pickle`` file. Never opens it."""
        return path.suffix.lower() in _PICKLE_SUFFIXES and path.is_file()

    def inspect(self, path: Path, options: PushOptions) -> ModelInfo:
        """Unpickle the estimator (only with ``--trust-pickle``) and describe it.

        Raises:
            InvalidModel: not trusted (saying why and what to use instead), not a pickle, not
                a fitted estimator.
            MissingDependency, InvalidInput: as for ``SkopsRuntime.inspect``.
        """
        estimator = _read_pickle(path, trusted=options.trust_pickle)
        signature, metadata = describe(estimator, options)
        return ModelInfo(single_file(path), signature, metadata)

    def load(self, path: Path, options: LoadOptions) -> TabularModel:
        """Unpickle the estimator, if and only if the version was pushed trusted."""
        return sklearn_model(_read_pickle(path, trusted=options.trust_pickle), options)


def describe(estimator: Any, options: PushOptions) -> tuple[Signature, dict[str, Any]]:
    """The signature and metadata of a fitted estimator (see the module docstring).

    Raises:
        InvalidModel: not an estimator with ``predict`` or ``transform``, or not fitted.
        InvalidInput: neither the model nor ``--example`` tells the number of features and no
            ``--signature`` was given; an example or signature that does not fit.
    """
    sklearn = _import_sklearn()
    what = f"{type(estimator).__module__}.{type(estimator).__qualname__}"
    foreign = InvalidModel(f"the file holds a {what}, not a scikit-learn model")
    if not (hasattr(estimator, "predict") or hasattr(estimator, "transform")):
        raise foreign
    try:
        sklearn.utils.validation.check_is_fitted(estimator)
    except TypeError as exc:  # what check_is_fitted says of objects that are not estimators
        raise foreign from exc
    except sklearn.exceptions.NotFittedError as exc:
        raise InvalidModel(f"the {what} in the file is not fitted: {short_message(exc)}") from exc
    width = getattr(estimator, "n_features_in_", None)
    signature = resolve_signature(
        options,
        "scikit-learn",
        _outputs(estimator, _estimator_type(sklearn, estimator)),
        width if isinstance(width, int) else None,
        lambda declared: estimator_predictor(estimator, declared),
        learn=True,
    )
    metadata: dict[str, Any] = {
        "sklearn_version": sklearn.__version__,
        "estimator": what,
        "signature": signature.to_dict(),
    }
    classes = getattr(estimator, "classes_", None)
    if isinstance(classes, np.ndarray):
        metadata["classes"] = [str(item) for item in classes.tolist()]
    names = getattr(estimator, "feature_names_in_", None)
    if names is not None:
        metadata["feature_names"] = [str(name) for name in names]
    return signature, metadata


def sklearn_model(estimator: Any, options: LoadOptions) -> TabularModel:
    """A loaded model over ``estimator``, with the signature recorded at push time.

    ``predict`` is thread-safe: a fitted estimator is only read while predicting.
    """
    recorded = options.metadata.get("signature")
    if recorded:
        return estimator_predictor(estimator, Signature.from_dict(recorded))
    return estimator_predictor(estimator, describe(estimator, PushOptions())[0])


def read_estimator(path: Path, format_name: str, *, trusted: bool) -> Any:
    """The fitted estimator in a ``skops`` or ``sklearn_pickle`` file, for jobs that need the
    scikit-learn object itself (conversion to ONNX).

    ``trusted`` is the version's ``trust_pickle``: what ``load`` refuses, this refuses too.

    Raises:
        MissingDependency, InvalidModel: as for ``SkopsRuntime.load`` / ``PickleRuntime.load``.
    """
    if format_name == "skops":
        return _read_skops(path, trusted=trusted)[0]
    return _read_pickle(path, trusted=trusted)


def _outputs(estimator: Any, kind: str | None) -> tuple[TensorSpec, ...]:
    if kind == "classifier":
        return _classifier_outputs(estimator)
    if kind == "regressor":
        targets = _target_count(estimator)
        return (TensorSpec(PREDICTION, DataType.FP64, (-1,) if targets == 1 else (-1, targets)),)
    if hasattr(estimator, "predict"):
        if kind in _LABEL_ESTIMATORS:
            return (TensorSpec(LABEL, DataType.INT64, (-1,)),)
        return (TensorSpec(PREDICTION, DataType.FP64, (-1,)),)
    return (TensorSpec(OUTPUT, DataType.FP64, (-1, -1)),)


def _classifier_outputs(estimator: Any) -> tuple[TensorSpec, ...]:
    classes = estimator.classes_
    if isinstance(classes, list):  # several targets: one column of labels per target
        return (TensorSpec(LABEL, _label_type(np.concatenate(classes)), (-1, len(classes))),)
    label = TensorSpec(LABEL, _label_type(classes), (-1,))
    if not hasattr(estimator, "predict_proba"):
        return (label,)
    return (label, TensorSpec(PROBABILITIES, DataType.FP32, (-1, len(classes))))


def _estimator_type(sklearn: Any, estimator: Any) -> str | None:
    get_tags = getattr(sklearn.utils, "get_tags", None)  # scikit-learn 1.6 and later
    if get_tags is None:
        return getattr(estimator, "_estimator_type", None)
    kind: str | None = get_tags(estimator).estimator_type
    return kind


def _label_type(classes: Any) -> DataType:
    # Through a list, so that an object array of ints reads as ints and of str as text.
    kind = np.asarray(np.asarray(classes).tolist()).dtype.kind
    return {"b": DataType.BOOL, "i": DataType.INT64, "u": DataType.INT64, "f": DataType.FP64}.get(
        kind, DataType.BYTES
    )


def _target_count(estimator: Any) -> int:
    final = estimator[-1] if hasattr(estimator, "steps") else estimator
    count = getattr(final, "n_outputs_", None)
    if isinstance(count, int):
        return count
    coef = getattr(final, "coef_", None)
    return int(coef.shape[0]) if isinstance(coef, np.ndarray) and coef.ndim == 2 else 1


def _import_sklearn() -> Any:
    return import_framework("sklearn", _NEEDS, "sklearn")


def _read_skops(path: Path, *, trusted: bool) -> tuple[Any, list[str]]:
    _import_sklearn()
    skops_io = import_framework("skops.io", _NEEDS, "sklearn")
    try:
        untrusted = [str(name) for name in skops_io.get_untrusted_types(file=path)]
    except Exception as exc:  # a damaged archive provokes zipfile, JSON and key errors alike
        message = f"{path.name} is not a skops file (skops.io.dump writes a zip archive)"
        raise InvalidModel(f"{message}: {short_message(exc)}") from exc
    if untrusted and not trusted:
        raise InvalidModel(
            f"{path.name} holds types skops does not trust by default: {', '.join(untrusted)}; "
            "rebuilding them can run their code. Push it with --trust-pickle if you trust "
            "them and where the file came from"
        )
    try:
        return skops_io.load(path, trusted=untrusted), untrusted
    except Exception as exc:  # skops raises whatever the damaged part provokes
        raise InvalidModel(f"skops could not load {path.name}: {short_message(exc)}") from exc


def _read_pickle(path: Path, *, trusted: bool) -> Any:
    if not trusted:
        raise InvalidModel(
            f"{path.name} is a pickle, and loading a pickle runs code from the file; push it "
            "with --trust-pickle if you trust where it came from, or save the model with skops "
            "(skops.io.dump) — a safe format — or convert it to ONNX"
        )
    _import_sklearn()
    joblib = import_framework("joblib", _NEEDS, "sklearn")
    try:
        return joblib.load(path)  # joblib also reads plain pickles
    except Exception as exc:  # unpickling can raise anything the file's code raises
        raise InvalidModel(f"{path.name} could not be unpickled: {short_message(exc)}") from exc
