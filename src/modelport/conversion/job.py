"""The conversion job: a version in, a parity-checked ONNX version out.

``convert`` is a derive job (``modelport.jobs.derive``): it exports the source version into
the job's scratch directory, fits the graph to the source's signature, and has the job run
both models on the same inputs (``jobs.parity``); the result is pushed only when every
output agrees within its tolerance. A conversion that fails parity stores nothing: no
version exists, even for a moment, that a server or an alias could pick up. The new
version records its lineage (parent, ``convert``, converter and version, exporter, opset)
and the parity report as its metrics.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from modelport.conversion.converters import ConversionSource, Converter, Exported, converter_for
from modelport.conversion.onnx_graph import conform, opsets
from modelport.conversion.text_parity import TextParity, parity_texts, text_parity
from modelport.errors import InvalidInput, InvalidModel, ModelportError, UnsupportedFormat
from modelport.jobs import Checkout, Produced, derive
from modelport.jobs.inputs import parity_inputs
from modelport.jobs.parity import ParityReport, compare
from modelport.registry import ModelVersion, Registry
from modelport.runtimes import LoadedModel
from modelport.types import ModelRef, Tensors

__all__ = ["ConversionReport", "convert"]

DEFAULT_ROWS = 256
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True, slots=True)
class ConversionReport:
    """A conversion that passed: the new version, what made it, and how it compares."""

    version: ModelVersion
    source: ModelVersion
    parameters: dict[str, Any]
    """The lineage parameters recorded with the version (converter, opset, ...)."""
    parity: ParityReport

    def table(self) -> tuple[list[str], list[list[str]]]:
        """The parity report as headers and rows of text, one row per output."""
        headers = ["output", "max abs", "max rel", "agreement", "tolerance (abs/rel)", "result"]
        rows = [
            [
                output.name,
                _number(output.max_abs),
                _number(output.max_rel),
                "-" if output.agreement is None else f"{output.agreement:.2%}",
                "-"
                if output.tolerance is None
                else f"{output.tolerance.absolute:g}/{output.tolerance.relative:g}",
                "ok" if output.passed else "FAILED",
            ]
            for output in self.parity.outputs
        ]
        cosine = self.parity.cosine if isinstance(self.parity, TextParity) else {}
        if cosine:  # embeddings of a text model: how far each row turned, at worst
            headers.insert(4, "least cosine")
            for row in rows:
                row.insert(4, f"{cosine[row[0]]:.6f}" if row[0] in cosine else "-")
        return headers, rows

    def to_dict(self) -> dict[str, Any]:
        outputs = [
            {
                "name": output.name,
                "max_abs": output.max_abs,
                "max_rel": output.max_rel,
                "agreement": output.agreement,
                "tolerance": None
                if output.tolerance is None
                else {"abs": output.tolerance.absolute, "rel": output.tolerance.relative},
                "passed": output.passed,
            }
            for output in self.parity.outputs
        ]
        if isinstance(self.parity, TextParity):
            for output in outputs:
                output["least_cosine"] = self.parity.cosine.get(str(output["name"]))
        return {
            "version": self.version.to_dict(),
            "source": self.source.ref,
            "parameters": self.parameters,
            "parity": {
                "passed": self.parity.passed,
                "rows": self.parity.rows,
                "inputs": self.parity.inputs,
                "outputs": outputs,
            },
        }


def convert(
    registry: Registry,
    ref: ModelRef | str,
    *,
    to: str = "onnx",
    opset: int | None = None,
    dataset: str | Path | None = None,
    rows: int = DEFAULT_ROWS,
    tolerance: float | None = None,
    name: str | None = None,
    aliases: Iterable[str] = (),
) -> ConversionReport:
    """Convert the version ``ref`` names to ``to`` and store it as a new version.

    Args:
        opset: the ONNX operator set to write; default: the converter's choice.
        dataset: parity inputs, a ``.npz`` (one array per input name) or ``.npy`` (one
            input); its first ``rows`` rows are used. Default: inputs generated from the
            signature (see ``jobs.inputs.generated_inputs``).
        tolerance: absolute and relative tolerance for floating-point outputs, replacing
            the per-datatype defaults (``jobs.parity.DEFAULT_TOLERANCES``).
        name: the model to store the version under; default: the source's model.
        aliases: aliases to point at the new version.

    Raises:
        NotFound: no such version.
        InvalidInput: bad options, a dataset that does not fit, a version already ONNX.
        UnsupportedFormat: no converter for the format, or one that fails on this model or
            cannot write the opset asked for.
        MissingDependency: the converter's library is not installed (names the extra).
        InvalidModel: the converted model does not compute what the source does (nothing is
            stored), or the source is refused as its runtime refuses it.
        VerificationFailed: the source's stored files are damaged.
    """
    _check_options(opset, tolerance)
    record = registry.get(ref)
    job = _Conversion(record, converter_for(record, to), opset, tolerance)
    if dataset is None and record.format == "huggingface":
        # Random words would leave truncation, padding and real vocabulary untested.
        job.inputs, job.origin = parity_texts(rows), "sample-text"
    else:
        job.inputs, job.origin = parity_inputs(
            record.signature, Path(dataset).expanduser() if dataset else None, rows
        )
    derived = derive(
        registry, record.ref, job.produce, kind="convert", check=job.check,
        parameters=job.parameters(), name=name, aliases=aliases,
    )  # fmt: skip
    return ConversionReport(derived.version, derived.parent, derived.parameters, derived.report)


class _Conversion:
    """The two steps conversion adds to a derive job, and what they share."""

    def __init__(
        self, record: ModelVersion, converter: Converter, opset: int | None, tolerance: float | None
    ) -> None:
        self.record = record
        self.converter = converter
        self.opset = opset
        self.tolerance = tolerance
        self.inputs: Tensors = {}
        self.origin = "generated"
        self.made_with = ""

    def parameters(self) -> dict[str, Any]:
        return {
            "to": "onnx",
            "from": self.record.format,
            "opset_requested": self.opset,
            "parity_inputs": self.origin,
            "tolerance": self.tolerance,
            # Converting loads the source; a pickle-based one only because it was trusted.
            "source_trust_pickle": self.record.trust_pickle,
        }

    def produce(self, checkout: Checkout, directory: Path) -> Produced:
        exported = _export(
            self.converter, ConversionSource(self.record, checkout.entry, self.opset, directory)
        )
        if exported.format == "onnx":  # other formats promise the signature themselves
            conform(exported.path, self.record.signature)
        self.made_with = exported.converter
        written = opsets(exported.graph)
        made: dict[str, Any] = {
            "converter": exported.converter,
            "converter_version": exported.converter_version,
            "opset": written.get("ai.onnx"),
            "opsets": written,
        }
        if exported.exporter is not None:
            made["exporter"] = exported.exporter
        kept = ", tokenizer kept" if exported.format != "onnx" else ""
        return Produced(
            exported.path,
            format=exported.format,
            parameters=made,
            description=f"{self.record.ref} converted to ONNX with {exported.converter}{kept}",
        )

    def check(self, source: LoadedModel, converted: LoadedModel) -> ParityReport:
        if self.record.format == "huggingface":
            report: ParityReport = text_parity(
                source, converted, self.inputs, tolerance=self.tolerance, origin=self.origin
            )
        else:
            report = compare(source, converted, self.inputs, tolerance=self.tolerance,
                             origin=self.origin)  # fmt: skip
        if not report.passed:
            builtin = self.origin in ("generated", "sample-text")
            where = self.origin if builtin else f"{self.origin}'s"
            hint = ""
            if any(out.tolerance is not None and not out.passed for out in report.outputs):
                hint = " (--tolerance accepts larger floating-point differences)"
            raise InvalidModel(
                f"the ONNX conversion of {self.record.ref} ({self.made_with}) does not match it "
                f"on {report.rows} {where} rows: {report.failures()}; nothing was stored{hint}"
            )
        return report


def _check_options(opset: int | None, tolerance: float | None) -> None:
    newest = onnx.defs.onnx_opset_version()
    if opset is not None and not 1 <= opset <= newest:
        raise InvalidInput(f"opset must be between 1 and {newest} (the newest ONNX knows here)")
    if tolerance is not None and not (math.isfinite(tolerance) and tolerance >= 0):
        raise InvalidInput(f"tolerance must be a number of 0 or more, not {tolerance}")


def _export(converter: Converter, job: ConversionSource) -> Exported:
    try:
        exported = converter(job)
    except ModelportError:
        raise
    except Exception as exc:  # converters raise whatever the model provokes, with no common base
        raise UnsupportedFormat(
            f"{job.record.ref} ({job.record.format}) could not be converted to ONNX: "
            f"{_one_line(exc)}"
        ) from exc
    written = opsets(exported.graph).get("ai.onnx")
    if job.opset is not None and written is not None and written > job.opset:
        # torch's exporter keeps its own opset when it cannot convert down, and only logs it.
        raise UnsupportedFormat(
            f"{exported.converter} could not write {job.record.ref} as ONNX opset {job.opset} "
            f"(it wrote opset {written}); ask for --opset {written} or newer"
        )
    return exported


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _one_line(exc: BaseException) -> str:
    lines = [line for line in _ANSI.sub("", str(exc)).splitlines() if line.strip()]
    text = lines[0].strip() if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
