"""Datasets in the registry: every file kind, identity, versions, gc, splits, builtins,
and every way bad data is refused with nothing stored."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from modelport import InvalidInput, NotFound, Registry
from modelport.errors import Conflict
from modelport.registry.store import manifest_key
from modelport.types import DataType
from tests.dataset_files import (
    write_csv,
    write_images,
    write_jsonl,
    write_npy,
    write_npz,
    write_parquet,
)

WRITERS: dict[str, tuple[str, Callable[[Path], Path]]] = {
    "npz": ("d.npz", write_npz),
    "npy": ("d.npy", write_npy),
    "csv": ("d.csv", write_csv),
    "parquet": ("d.parquet", write_parquet),
    "jsonl": ("d.jsonl", write_jsonl),
    "images": ("pets", write_images),
}
EXPECTED_COLUMNS = {
    "npz": [("X", "FP32", [4]), ("y", "INT64", [])],
    "npy": [("data", "INT32", [2, 3])],
    "csv": [("width", "FP64", []), ("height", "INT64", []), ("colour", "BYTES", []),
            ("label", "INT64", [])],
    "parquet": [("a", "FP64", []), ("vec", "FP64", [2]), ("name", "BYTES", []),
                ("label", "INT64", [])],
    "jsonl": [("text", "BYTES", []), ("score", "FP64", []), ("label", "INT64", [])],
    "images": [("image", "UINT8", [6, 6]), ("label", "INT64", [])],
}  # fmt: skip


def _nothing_stored(registry: Registry) -> None:
    assert registry.datasets.list() == []
    assert list(registry.store.list()) == []


@pytest.mark.parametrize("kind", list(WRITERS))
def test_each_kind_of_file_pushes_profiles_and_reads_back(
    registry: Registry, tmp_path: Path, kind: str
) -> None:
    filename, write = WRITERS[kind]
    path = write(tmp_path / filename)

    version = registry.datasets.push(path, "data", description="d", license="CC0-1.0")

    rows = 8 if kind == "images" else 30
    assert (version.ref, version.format, version.rows) == ("data@1", kind, rows)
    assert [(c.name, c.datatype.value, list(c.shape)) for c in version.columns] == (
        EXPECTED_COLUMNS[kind]
    )
    assert version.label == {"npz": "y", "npy": None}.get(kind, "label")
    assert version.digest == manifest_key(version.files)
    assert (version.license, version.source) == ("CC0-1.0", str(path.resolve()))
    view = registry.datasets.load("data")
    assert view.rows == rows
    for column in version.columns:
        stats = version.profile[column.name]
        assert {"count", "missing_rate"} <= stats.keys()
        assert view[column.name].shape[1:] == column.shape
    assert registry.datasets.verify("data@1") == []


def test_the_profile_holds_statistics_categories_and_missing_values(
    registry: Registry, tmp_path: Path
) -> None:
    version = registry.datasets.push(write_jsonl(tmp_path / "d.jsonl"), "text")
    score = version.profile["score"]
    assert score["missing_rate"] == pytest.approx(1 / 30)
    assert score["min"] == 0.0 and score["max"] == 2.9
    assert score["mean"] == pytest.approx(np.mean([i / 10 for i in range(30) if i != 3]))
    assert set(score["quantiles"]) == {"0.01", "0.05", "0.25", "0.5", "0.75", "0.95", "0.99"}
    assert sum(score["histogram"]["counts"]) == 29 and len(score["histogram"]["edges"]) == 11
    assert version.profile["label"]["categories"] == {"0": 15, "1": 15}
    assert version.profile["text"]["distinct"] == 30
    assert registry.datasets.load("text")["text"][0] == "sentence number 0"


def test_a_one_file_dataset_is_identified_by_every_byte(registry: Registry, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv")
    first = registry.datasets.push(path, "d")
    again = registry.datasets.push(path, "d")
    path.write_text(path.read_text().replace("red", "rot"))
    changed = registry.datasets.push(path, "d")

    assert first.digest == again.digest != changed.digest
    (entry,) = first.files
    assert (
        entry.digest == hashlib.sha256(write_csv(tmp_path / "again.csv").read_bytes()).hexdigest()
    )


def test_versions_aliases_tags_and_numbers_never_reused(registry: Registry, tmp_path: Path) -> None:
    path = write_npz(tmp_path / "d.npz")
    registry.datasets.push(path, "d", aliases=["prod"], tags={"team": "vision"})
    registry.datasets.push(path, "d")
    assert registry.datasets.get("d@prod").version == 1
    assert registry.datasets.get("d@1").tags == {"team": "vision"}
    with pytest.raises(Conflict, match="alias prod"):
        registry.datasets.delete("d@1")
    registry.datasets.delete("d@2")
    assert registry.datasets.push(path, "d").version == 3
    registry.datasets.set_alias("d@3", "prod")
    assert registry.datasets.get("d@prod").version == 3
    with pytest.raises(NotFound, match="has no version 2; latest is 3"):
        registry.datasets.get("d@2")
    with pytest.raises(NotFound, match="no dataset named 'e'"):
        registry.datasets.get("e")
    [summary] = registry.datasets.list()
    assert (summary.name, summary.versions, summary.latest, summary.aliases) == (
        "d",
        2,
        3,
        {"prod": 3},
    )


def test_gc_keeps_dataset_blobs_and_frees_them_once_unreferenced(
    registry: Registry, tmp_path: Path
) -> None:
    registry.datasets.builtin("iris")
    split = registry.datasets.split("iris@1", {"train": 0.5, "test": 0.5})
    digests = {e.digest for e in split.files}

    registry.gc()
    assert all(registry.store.exists(d) for d in digests)
    registry.datasets.delete("iris@1")  # its data blob is still the split version's
    registry.gc()
    assert registry.datasets.verify("iris@2") == []
    assert registry.datasets.load("iris@2:test").rows == 75

    registry.datasets.delete("iris@2")
    registry.gc()
    assert not any(registry.store.exists(d) for d in digests)


def test_split_is_deterministic_stratified_and_records_lineage(registry: Registry) -> None:
    registry.datasets.builtin("digits")
    fractions = {"train": 0.8, "val": 0.1, "test": 0.1}
    two = registry.datasets.split("digits@1", fractions, seed=0, stratify="label")
    three = registry.datasets.split("digits@1", fractions, seed=0, stratify="label")
    four = registry.datasets.split("digits@1", fractions, seed=1)

    assert two.splits == {"train": 1438, "val": 180, "test": 179}
    assert sum(two.splits.values()) == two.rows == 1797
    assert (two.derived_from, two.operation) == ("digits@1", "split")
    assert two.split_method["method"] == "stratified" and two.split_method["seed"] == 0
    assert four.split_method["method"] == "random"
    train, val = registry.datasets.load("digits@2:train"), registry.datasets.load("digits@2:val")
    assert np.array_equal(
        train.split_rows["val"], registry.datasets.load("digits@3").split_rows["val"]
    )
    assert not np.array_equal(
        train.split_rows["val"], registry.datasets.load("digits@4").split_rows["val"]
    )
    assert not set(train.split_rows["train"]) & set(train.split_rows["val"])
    # Stratified: each of the ten digits holds 10% of val, give or take a row.
    counts = np.bincount(val.label, minlength=10)
    assert counts.min() >= 17 and counts.max() <= 19
    assert three.digest == two.digest != four.digest
    with pytest.raises(NotFound, match="no split 'holdout'; its splits: train, val, test"):
        registry.datasets.load("digits@2:holdout")
    # A split names rows everywhere: split it again.
    five = registry.datasets.split("digits@2:train", {"train": 0.5, "val": 0.5})
    assert sum(five.splits.values()) == 1438 and five.derived_from == "digits@2"


@pytest.mark.parametrize(
    "fractions",
    [{"train": 0.8, "val": 0.1}, {"train": 0.8, "val": 0.3}, {"train": 1.2, "test": -0.2}],
)
def test_splits_that_do_not_add_up_are_refused(
    registry: Registry, fractions: dict[str, float]
) -> None:
    registry.datasets.builtin("iris")
    with pytest.raises(InvalidInput, match="add up to 1|from 0 to 1"):
        registry.datasets.split("iris@1", fractions)
    assert [v.version for v in registry.datasets.versions("iris")] == [1]


@pytest.mark.parametrize(
    "which", ["iris", "digits", "wine", "breast_cancer", "diabetes", "linnerud"]
)
def test_builtins_come_from_scikit_learn_with_a_label_column(
    registry: Registry, which: str
) -> None:
    version = registry.datasets.builtin(which)
    assert version.ref == f"{which}@1" and version.label == "label"
    assert version.source == f"builtin:scikit-learn/{which}" and version.license
    label = version.column("label")
    assert label.shape == ((3,) if which == "linnerud" else ())


def test_a_builtin_takes_another_name_and_unknown_sets_are_refused(registry: Registry) -> None:
    assert registry.datasets.builtin("wine", name="vino").ref == "vino@1"
    with pytest.raises(InvalidInput, match="no builtin dataset 'mnist'; choose one of iris"):
        registry.datasets.builtin("mnist")


# -- bad input: one clear line, nothing stored --------------------------------------------


BAD_FILES: dict[str, tuple[str, str, str]] = {
    "unreadable npz": ("d.npz", "not a zip", "cannot read d.npz as a .npz archive"),
    "unreadable parquet": ("d.parquet", "PAR1 nope", "cannot read d.parquet as Parquet"),
    "unknown kind": ("d.xlsx", "x", "unknown kind of dataset file"),
    "ragged csv": ("d.csv", "a,b\n1,2\n3,4,5\n", "ragged rows: Expected 2 columns, got 3"),
    "mixed csv": (
        "d.csv",
        "a,b\n1,x\nfoo,y\n",
        r"column 'a' mixes types: numbers \(row 1: '1'\) and text \(row 2: 'foo'\)",
    ),
    "mixed jsonl": ("d.jsonl", '{"a": 1}\n{"a": "x"}\n', "a column mixes types"),
    "ragged jsonl": ("d.jsonl", '{"a": [1, 2]}\n{"a": [1]}\n', "ragged rows: column 'a'"),
    "empty csv": ("d.csv", "a,b\n", "d.csv holds no rows"),
    "empty file": ("d.csv", "", "cannot read d.csv as CSV"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_files_are_refused_in_one_line_and_store_nothing(
    registry: Registry, tmp_path: Path, case: str
) -> None:
    name, content, message = BAD_FILES[case]
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(InvalidInput, match=message) as caught:
        registry.datasets.push(path, "bad")
    assert "\n" not in str(caught.value)
    _nothing_stored(registry)


def test_ragged_npz_arrays_and_a_missing_label_are_refused(
    registry: Registry, tmp_path: Path
) -> None:
    np.savez(tmp_path / "r.npz", X=np.zeros((4, 2)), y=np.zeros(3))
    with pytest.raises(InvalidInput, match=r"ragged arrays.*'X' 4, 'y' 3"):
        registry.datasets.push(tmp_path / "r.npz", "bad")
    with pytest.raises(InvalidInput, match="has no label column 'target'; its columns are width"):
        registry.datasets.push(write_csv(tmp_path / "d.csv"), "bad", label="target")
    _nothing_stored(registry)


def test_images_of_different_sizes_are_named(registry: Registry, tmp_path: Path) -> None:
    from PIL import Image

    root = write_images(tmp_path / "pets")
    Image.fromarray(np.zeros((9, 5), dtype=np.uint8)).save(root / "dog" / "big.png")
    with pytest.raises(
        InvalidInput,
        match=r"size and colour mode of cat/0.png \(6x6 grayscale\); these differ: dog/big.png \(5x9 grayscale\)",
    ):
        registry.datasets.push(root, "pets")
    _nothing_stored(registry)


def test_rgb_images_keep_their_channels(registry: Registry, tmp_path: Path) -> None:
    version = registry.datasets.push(write_images(tmp_path / "pets", mode="RGB"), "pets")
    assert version.column("image").shape == (6, 6, 3)
    assert version.profile["label"]["categories"] == {"0": 4, "1": 4}


def test_a_large_csv_streams_in_chunks_and_widens_an_int_column(home: Path, tmp_path: Path) -> None:
    # Past pyarrow's first 8 MiB block: integers, then a float, then text in another file.
    rows = 3_000_000
    path = tmp_path / "big.csv"
    path.write_text("n\n" + "10\n" * rows + "1.5\n")
    with Registry() as registry:
        version = registry.datasets.push(path, "big")
        assert version.rows == rows + 1
        assert version.column("n").datatype is DataType.FP64
        assert version.profile["n"]["max"] == 10.0 and version.profile["n"]["sampled"]
        path.write_text("n\n" + "10\n" * rows + "oops\n")
        with pytest.raises(InvalidInput, match=r"column 'n' mixes types after row \d+: 'oops'"):
            registry.datasets.push(path, "bad")
        assert [d.name for d in registry.datasets.list()] == ["big"]


def test_booleans_with_gaps_infinities_and_objects(registry: Registry, tmp_path: Path) -> None:
    (tmp_path / "b.jsonl").write_text(
        '{"ok": true, "x": 1.0}\n{"ok": null, "x": 2.0}\n{"ok": false, "x": 3.0}\n'
    )
    version = registry.datasets.push(tmp_path / "b.jsonl", "flags")
    assert version.column("ok").datatype is DataType.BOOL
    assert version.profile["ok"]["categories"] == {"True": 1, "False": 1}
    (tmp_path / "inf.csv").write_text("x\n1.0\ninf\n")
    assert registry.datasets.push(tmp_path / "inf.csv", "inf").profile["x"]["mean"] is None
    (tmp_path / "o.jsonl").write_text('{"a": {"b": 1}}\n')
    with pytest.raises(InvalidInput, match="column 'a' holds objects"):
        registry.datasets.push(tmp_path / "o.jsonl", "objects")


def test_image_class_names_are_recorded(registry: Registry, tmp_path: Path) -> None:
    version = registry.datasets.push(write_images(tmp_path / "pets"), "pets")
    assert version.profile["label"]["classes"] == ["cat", "dog"]
