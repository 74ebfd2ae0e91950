"""Parity for text models: the check a Hugging Face conversion must pass.

Both models run on real texts (``parity_texts``: sentences of many lengths and scripts, and
two far past any maximum length, so that truncation must agree too); every output is
compared as ``jobs.parity.compare`` compares it (per value within the FP32 tolerance; the
``label`` of at least 99% of rows the same, which on these few rows means every one), and
every embedding must also point the same way: a cosine similarity of at least
``MIN_COSINE`` to the parent's, row by row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from modelport.jobs.parity import CHUNK_ROWS, ParityReport, compare
from modelport.runtimes import LoadedModel
from modelport.types import Tensors

__all__ = ["MIN_COSINE", "TextParity", "parity_texts", "text_parity"]

MIN_COSINE = 0.9999
"""The least cosine similarity of a converted embedding to its parent's, row by row."""

_SENTENCES = (
    "I love this movie",
    "this film was terrible",
    "The quick brown fox jumps over the lazy dog.",
    "what a great day",
    "bad awful boring plot",
    "the actors were wonderful and the music was great",
    "I would not watch it again",
    "Stock markets fell sharply on Tuesday after the central bank raised interest rates.",
    "How do I reset my password?",
    "The patient was given 5 mg of the drug twice a day.",
    "Il fait beau aujourd'hui.",
    "Der Zug hat zehn Minuten Verspätung.",
    "東京は日本の首都です。",
    "emoji 🙂 and accents: café, naïve, façade",
    "",
    "ok",
    "A",
    "1234567890",
    "Neural networks learn representations from data.",
    "Can you recommend a good restaurant near the station?",
    "The meeting has been moved to Thursday at 3 pm.",
    "Photosynthesis converts light energy into chemical energy.",
    'He said: "I\'ll be there" -- but never came.',
    "UPPER CASE TEXT SHOULD EMBED LIKE LOWER CASE TEXT",
)
_LONG = " ".join(
    f"a sentence long enough to be truncated at the model's maximum length, word {i}"
    for i in range(60)
)


def parity_texts(rows: int) -> Tensors:
    """Up to ``rows`` texts as the ``text`` input: built-in sentences of many lengths and
    scripts, pairs of them, and last two texts far past any maximum length (so that
    truncation is compared too, in a chunk of their own size)."""
    pairs = [f"{a} {b}" for a, b in zip(_SENTENCES, reversed(_SENTENCES), strict=True)]
    texts = [*_SENTENCES, *pairs][: max(rows - 2, 0)] + [_LONG, _LONG.upper()][: max(rows, 1)]
    return {"text": np.array([text.encode() for text in texts], dtype=object)}


@dataclass(frozen=True, slots=True)
class TextParity(ParityReport):
    """A parity report with the least cosine similarity of each embedding output."""

    cosine: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        cosines_pass = all(value >= MIN_COSINE for value in self.cosine.values())
        return cosines_pass and all(output.passed for output in self.outputs)

    def metrics(self) -> dict[str, Any]:
        metrics = ParityReport.metrics(self)
        metrics["parity.passed"] = self.passed
        for name, value in self.cosine.items():
            metrics[f"parity.min_cosine.{name}"] = value
        return metrics

    def failures(self) -> str:
        clauses = [ParityReport.failures(self)] if not all(o.passed for o in self.outputs) else []
        clauses += [
            f"{name!r}: least cosine similarity {value:.6f} (at least {MIN_COSINE} needed)"
            for name, value in self.cosine.items()
            if value < MIN_COSINE
        ]
        return "; ".join(clauses)


def text_parity(
    source: LoadedModel,
    converted: LoadedModel,
    inputs: Tensors,
    *,
    tolerance: float | None = None,
    origin: str = "sample-text",
) -> TextParity:
    """``jobs.parity.compare`` on ``inputs``, plus the least row-wise cosine similarity of
    every embedding (2-D floating-point output of the source, bar probabilities).

    Raises:
        As ``compare``.
    """
    report = compare(source, converted, inputs, tolerance=tolerance, origin=origin)
    embeddings = [
        spec.name
        for spec in source.signature.outputs
        if spec.name != "probabilities" and spec.datatype.numpy.kind == "f"
    ]
    cosine: dict[str, float] = {}
    if embeddings:
        want, got = _embed(source, inputs, embeddings), _embed(converted, inputs, embeddings)
        cosine = {name: _least_cosine(want[name], got[name]) for name in embeddings}
    return TextParity(report.rows, report.inputs, report.outputs, cosine)


def _embed(model: LoadedModel, inputs: Tensors, names: list[str]) -> Tensors:
    # In the chunks parity runs in: one batch of every text pads all to the longest.
    total = len(inputs["text"])
    parts = [
        model.predict({"text": inputs["text"][start : start + CHUNK_ROWS]}, names)
        for start in range(0, total, CHUNK_ROWS)
    ]
    return {name: np.concatenate([part[name] for part in parts]) for name in names}


def _least_cosine(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = (a * b).sum(axis=1)
    # Two zero vectors agree; one zero against another vector does not.
    cosine = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), 0.0)
    both_zero = (np.linalg.norm(a, axis=1) == 0) & (np.linalg.norm(b, axis=1) == 0)
    return float(np.where(both_zero, 1.0, cosine).min(initial=1.0))
