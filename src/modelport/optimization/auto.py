"""The recipes ``--auto`` tries: every kind that applies, and a bounded set of static int8
variants (the combinations that planning found to differ most), so the search stays
within minutes on a CPU."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from modelport.optimization.recipes import Recipe, refusal

if TYPE_CHECKING:
    import onnx

__all__ = ["AUTO_CALIBRATION_ROWS", "auto_recipes"]

AUTO_CALIBRATION_ROWS = 64
"""Calibration rows per static variant in ``--auto``: enough for ranges, and a dozen
calibrations stay quick."""

_STATIC = (
    Recipe("int8", method="minmax", activation_type="uint8", per_channel=True),
    Recipe("int8", method="minmax", activation_type="uint8"),
    Recipe("int8", method="minmax", activation_type="int8", per_channel=True),
    Recipe("int8", method="minmax", activation_type="int8"),
    Recipe("int8", method="entropy", activation_type="uint8", per_channel=True),
    Recipe("int8", method="percentile", activation_type="uint8", per_channel=True),
    Recipe("int8", method="percentile", activation_type="int8", per_channel=True),
    Recipe("int8", method="minmax", activation_type="uint8", per_channel=True, exclude_head=True),
)


def auto_recipes(
    model: onnx.ModelProto, config: dict[str, Any] | None
) -> tuple[list[Recipe], list[tuple[Recipe, str]]]:
    """The recipes to try on ``model``, and those skipped with the reason."""
    grid = [
        Recipe("graph", level="extended"),
        Recipe("graph", level="all"),
        Recipe("int8-dynamic"),
        Recipe("int8-dynamic", per_channel=True),
        *_STATIC,
        Recipe("fp16"),
        Recipe("fusion"),
        Recipe("fusion", int8=True),
        Recipe("fusion", int8=True, per_channel=True),
    ]
    if config is not None:
        # On a transformer the static variants calibrate attention slowly and lose the most;
        # the fused graphs are what pays there.
        grid = [r for r in grid if r.kind != "int8"]
    tried, skipped = [], []
    for recipe in grid:
        reason = refusal(recipe, model, config)
        if reason is None:
            tried.append(recipe)
        else:
            skipped.append((recipe, reason))
    return tried, skipped
