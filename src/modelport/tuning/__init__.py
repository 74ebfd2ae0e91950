"""Serving auto-tune: measure serving settings on the real server and store the best."""

from modelport.tuning.tune import TunePoint, TuneResult, tune

__all__ = ["TunePoint", "TuneResult", "tune"]
