"""Small real tabular models, trained on scikit-learn's bundled data sets and saved the way each
framework saves them. Training is cached per process: every model here fits in milliseconds,
but tests ask for the same ones many times.

Features are returned as float32 (what the scikit-learn and XGBoost signatures take); models
are fitted on the data sets' own float64 values, as users fit them.
"""

from __future__ import annotations

import pickle
from functools import cache
from pathlib import Path
from typing import Any

import joblib
import lightgbm
import numpy as np
import skops.io
import xgboost
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.decomposition import PCA
from sklearn.ensemble import RandomForestClassifier
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

Array = np.ndarray[Any, Any]

DATASETS = {"iris": load_iris, "breast_cancer": load_breast_cancer, "diabetes": load_diabetes}

TEXTS = [
    "the match ended in a draw",
    "a late goal won the cup final",
    "the striker scored twice",
    "parliament passed the budget",
    "the minister resigned today",
    "voters go to the polls",
]
TOPICS = ["sport", "sport", "sport", "politics", "politics", "politics"]


@cache
def _data(name: str) -> tuple[Array, Array]:
    features, target = DATASETS[name](return_X_y=True)
    return features, target


def features(name: str, dtype: Any = np.float32) -> Array:
    """The data set's features as ``dtype`` (a fresh array each call)."""
    return _data(name)[0].astype(dtype)


def target(name: str) -> Array:
    return _data(name)[1].copy()


# --- scikit-learn -----------------------------------------------------------------------------


@cache
def sklearn_model(kind: str) -> Any:
    """A fitted scikit-learn model of one of these kinds:

    ``iris_pipeline`` (scaler + logistic regression, only types skops trusts), ``iris_forest``
    (a random forest: skops does not trust its trees by default), ``iris_names`` (classes
    are the species' names), ``diabetes_ridge`` (a regressor), ``iris_pca`` (a transformer),
    ``text`` (TF-IDF + logistic regression on strings).
    """
    if kind == "text":
        return make_pipeline(TfidfVectorizer(), LogisticRegression()).fit(TEXTS, TOPICS)
    if kind == "diabetes_ridge":
        return Ridge().fit(*_data("diabetes"))
    x, y = _data("iris")
    if kind == "iris_pipeline":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x, y)
    if kind == "iris_forest":
        return RandomForestClassifier(n_estimators=5, max_depth=3, random_state=0).fit(x, y)
    if kind == "iris_names":
        names = load_iris().target_names[y]
        return LogisticRegression(max_iter=1000).fit(x, names)
    if kind == "iris_pca":
        return PCA(n_components=2).fit(x)
    raise ValueError(kind)


def save_skops(model: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    skops.io.dump(model, path)
    return path


def save_pickle(model: Any, path: Path) -> Path:
    """``joblib.dump`` for ``.joblib``, the standard library's ``pickle`` otherwise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".joblib":
        joblib.dump(model, path)
    else:
        path.write_bytes(pickle.dumps(model))
    return path


class MakesDirectory:
    """Unpickling this creates ``marker``: a stand-in for code a malicious pickle runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        import os

        return os.mkdir, (str(self.marker),)


# --- XGBoost and LightGBM ---------------------------------------------------------------------

# objective -> the data set it is trained on
XGBOOST_OBJECTIVES = {
    "binary:logistic": "breast_cancer",
    "multi:softprob": "iris",
    "multi:softmax": "iris",
    "reg:squarederror": "diabetes",
    "binary:logitraw": "breast_cancer",
}
LIGHTGBM_OBJECTIVES = {
    "binary": "breast_cancer",
    "multiclass": "iris",
    "regression": "diabetes",
    "cross_entropy": "breast_cancer",
}


@cache
def xgboost_model(objective: str) -> Any:
    """A small XGBoost scikit-learn model trained with ``objective``."""
    x, y = _data(XGBOOST_OBJECTIVES[objective])
    settings = {"n_estimators": 8, "max_depth": 3, "objective": objective, "n_jobs": 1}
    if objective.startswith(("binary", "multi")):
        return xgboost.XGBClassifier(**settings).fit(x, y)
    return xgboost.XGBRegressor(**settings).fit(x, y)


@cache
def xgboost_early_stopped() -> Any:
    """A binary classifier whose early stopping recorded a best iteration before the last."""
    x, y = _data("breast_cancer")
    model = xgboost.XGBClassifier(
        n_estimators=200, learning_rate=0.5, early_stopping_rounds=3, n_jobs=1
    )
    return model.fit(x[::2], y[::2], eval_set=[(x[1::2], y[1::2])], verbose=False)


@cache
def lightgbm_model(objective: str) -> Any:
    """A small LightGBM scikit-learn model trained with ``objective``."""
    x, y = _data(LIGHTGBM_OBJECTIVES[objective])
    settings = {"n_estimators": 8, "objective": objective, "verbose": -1, "n_jobs": 1}
    if objective in ("binary", "multiclass"):
        return lightgbm.LGBMClassifier(**settings).fit(x, y)
    return lightgbm.LGBMRegressor(**settings).fit(x, y)


def save_xgboost(model: Any, path: Path) -> Path:
    """``save_model`` as JSON or UBJSON, by ``path``'s suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save_model(path)
    return path


def save_lightgbm(model: Any, path: Path) -> Path:
    """The booster's text model (``Booster.save_model``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    model.booster_.save_model(path)
    return path
