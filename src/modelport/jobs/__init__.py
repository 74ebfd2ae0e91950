"""Jobs: versions derived from other versions, each checked and pushed with its lineage.

``derive`` is the one job every derivation is built on (``modelport.conversion`` is one short
function on it); ``parity`` and ``inputs`` are the check most derivations run.
"""

from modelport.jobs.derive import Checkout, CheckReport, Derived, Produced, conform, derive

__all__ = ["CheckReport", "Checkout", "Derived", "Produced", "conform", "derive"]
