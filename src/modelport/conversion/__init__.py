"""Format conversion with a parity check: every result is a new version with its lineage.

    from modelport.conversion import convert

    report = convert(registry, "cnn@1", to="onnx")  # cnn@2, checked against cnn@1
    report.version.ref, report.parity.metrics()

The converters by source format are in ``converters``; what "computes the same" means is in
``modelport.jobs.parity``.
"""

from modelport.conversion.converters import TARGETS, supported_formats
from modelport.conversion.job import ConversionReport, convert
from modelport.jobs.parity import (
    DEFAULT_TOLERANCES,
    LABEL_AGREEMENT,
    OutputParity,
    ParityReport,
    Tolerance,
)

__all__ = [
    "DEFAULT_TOLERANCES",
    "LABEL_AGREEMENT",
    "TARGETS",
    "ConversionReport",
    "OutputParity",
    "ParityReport",
    "Tolerance",
    "convert",
    "supported_formats",
]
