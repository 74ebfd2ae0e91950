"""The conversion job: a version in, a parity-checked ONNX version out.

``convert`` exports the source version into a temporary directory, fits the graph to the
source's signature, runs both models on the same inputs, and pushes the result only when
every output agrees within its tolerance. A conversion that fails parity stores nothing:
no version exists, even for a moment, that a server or an alias could pick up. The new
version records its lineage (parent, ``convert``, converter and version, exporter, opset)
and the parity report as its metrics.
"""

from __future__ import annotations

import math
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from modelport.convert.converters import ConversionSource, Converter, Exported, converter_for
from modelport.convert.inputs import parity_inputs
from modelport.convert.onnx_graph import conform, opsets
from modelport.convert.parity import ParityReport, compare
from modelport.errors import InvalidInput, InvalidModel, ModelportError, UnsupportedFormat
from modelport.registry import Lineage, ModelVersion, Registry
from modelport.runtimes import LoadedModel, LoadOptions
from modelport.types import ModelRef, Tensors, validate_alias, validate_name

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
            signature (see ``parity.generated_inputs``).
        tolerance: absolute and relative tolerance for floating-point outputs, replacing
            the per-datatype defaults (``parity.DEFAULT_TOLERANCES``).
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
    """
    _check_options(opset, tolerance)
    alias_list = [validate_alias(alias) for alias in aliases]
    if name is not None:
        validate_name(name)
    record = registry.get(ref)
    converter = converter_for(record, to)
    inputs, origin = parity_inputs(
        record.signature, Path(dataset).expanduser() if dataset else None, rows
    )
    # Loading first verifies the stored files (per the verify policy) before a converter
    # reads the same checkout.
    source_model = registry.load(record.ref)
    try:
        with tempfile.TemporaryDirectory(prefix="modelport-convert-") as scratch:
            checkout = registry.checkout.checkout(list(record.files))
            job = ConversionSource(record, checkout / record.entry, opset, Path(scratch))
            exported = _export(converter, job)
            conform(exported.path, record.signature)
            parameters = _parameters(
                record, exported, opset=opset, origin=origin, tolerance=tolerance
            )
            report = _parity(
                registry, record, exported, source_model,
                inputs=inputs, tolerance=tolerance, origin=origin,
            )  # fmt: skip
            version = registry.push(
                exported.path,
                name or record.model,
                format="onnx",
                aliases=alias_list,
                description=f"{record.ref} converted to ONNX with {exported.converter}",
                lineage=Lineage(record.ref, "convert", parameters),
                metrics=report.metrics(),
            )
    finally:
        source_model.close()
    return ConversionReport(version, record, parameters, report)


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
    written = opsets(exported.path).get("ai.onnx")
    if job.opset is not None and written is not None and written > job.opset:
        # torch's exporter keeps its own opset when it cannot convert down, and only logs it.
        raise UnsupportedFormat(
            f"{exported.converter} could not write {job.record.ref} as ONNX opset {job.opset} "
            f"(it wrote opset {written}); ask for --opset {written} or newer"
        )
    return exported


def _parity(
    registry: Registry,
    record: ModelVersion,
    exported: Exported,
    source_model: LoadedModel,
    *,
    inputs: Tensors,
    tolerance: float | None,
    origin: str,
) -> ParityReport:
    converted = registry.runtimes.get("onnx").load(exported.path, LoadOptions())
    try:
        report = compare(source_model, converted, inputs, tolerance=tolerance, origin=origin)
    finally:
        converted.close()
    if not report.passed:
        where = "generated" if origin == "generated" else f"{origin}'s"
        hint = ""
        if any(output.tolerance is not None and not output.passed for output in report.outputs):
            hint = " (--tolerance accepts larger floating-point differences)"
        raise InvalidModel(
            f"the ONNX conversion of {record.ref} ({exported.converter}) does not match it on "
            f"{report.rows} {where} rows: {report.failures()}; nothing was stored{hint}"
        )
    return report


def _parameters(
    record: ModelVersion,
    exported: Exported,
    *,
    opset: int | None,
    origin: str,
    tolerance: float | None,
) -> dict[str, Any]:
    written = opsets(exported.path)
    parameters: dict[str, Any] = {
        "to": "onnx",
        "from": record.format,
        "converter": exported.converter,
        "converter_version": exported.converter_version,
        "opset": written.get("ai.onnx"),
        "opsets": written,
        "opset_requested": opset,
        "parity_inputs": origin,
        "tolerance": tolerance,
        # Converting loads the source; a pickle-based one only because it was trusted at push.
        "source_trust_pickle": record.trust_pickle,
    }
    if exported.exporter is not None:
        parameters["exporter"] = exported.exporter
    return parameters


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _one_line(exc: BaseException) -> str:
    lines = [line for line in _ANSI.sub("", str(exc)).splitlines() if line.strip()]
    text = lines[0].strip() if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
