"""Datasets: versioned data in the registry's blob store, and feeding it to models.

registry = Registry()
registry.datasets.builtin("digits")                       # digits@1
registry.datasets.split("digits@1", {"train": 0.8, "val": 0.1, "test": 0.1},
                        stratify="label")                 # digits@2
view = registry.datasets.load("digits@2:train")           # columns as numpy arrays
feed = load_feed(registry, "digits@2:val", model.signature)
"""

from modelport.datasets.catalog import Datasets
from modelport.datasets.feed import Feed, load_feed, parse_input_map
from modelport.datasets.records import ColumnSpec, DatasetRef, DatasetSummary, DatasetVersion
from modelport.datasets.view import DatasetView

__all__ = [
    "ColumnSpec",
    "DatasetRef",
    "DatasetSummary",
    "DatasetVersion",
    "DatasetView",
    "Datasets",
    "Feed",
    "load_feed",
    "parse_input_map",
]
