"""``modelport dataset ...`` through the installed entry point, as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_cli
from tests.dataset_files import write_csv


def test_builtin_split_ls_show_verify_alias_rm(home: Path, db_url: str) -> None:
    built = run_cli("dataset", "builtin", "digits")
    assert built.returncode == 0, built.stderr
    assert "pushed digits@1 (npz, 1797 rows" in built.stdout
    split = run_cli(
        "dataset", "split", "digits@1", "--train", "0.8", "--val", "0.1", "--test", "0.1",
        "--stratify", "label", "--seed", "0",
    )  # fmt: skip
    assert split.returncode == 0, split.stderr
    assert "digits@1 → digits@2 (train 1438, val 180, test 179 rows, stratified" in split.stdout

    listed = json.loads(run_cli("dataset", "ls", "--json").stdout)
    assert [(d["name"], d["latest"], d["versions"]) for d in listed] == [("digits", 2, 2)]
    shown = json.loads(run_cli("dataset", "show", "digits@2", "--json").stdout)
    assert shown["splits"] == {"train": 1438, "val": 180, "test": 179}
    assert shown["lineage"] == {
        "derived_from": "digits@1",
        "operation": "split",
        "parameters": {"fractions": {"train": 0.8, "val": 0.1, "test": 0.1}, "seed": 0,
                       "stratify": "label"},
    }  # fmt: skip
    assert shown["columns"][0] == {"name": "pixels", "datatype": "FP64", "shape": [64]}
    human = run_cli("dataset", "show", "digits@2:val")
    assert human.returncode == 0, human.stderr
    assert "stratified (train 0.8, val 0.1, test 0.1), seed 0" in human.stdout
    assert "pixels" in human.stdout and "lineage      split from digits@1" in human.stdout

    assert run_cli("gc").returncode == 0
    verified = run_cli("dataset", "verify", "digits@2")
    assert (verified.returncode, verified.stdout) == (0, "digits@2: ok\n")
    assert run_cli("dataset", "alias", "digits@2", "prod").stdout == "digits@prod → digits@2\n"
    refused = run_cli("dataset", "rm", "digits@prod")
    assert refused.returncode == 4 and "pass --force" in refused.stderr
    assert run_cli("dataset", "rm", "digits@1").stdout == "removed digits@1\n"
    versions = json.loads(run_cli("dataset", "ls", "digits", "--json").stdout)
    assert [v["version"] for v in versions] == [2]


def test_push_a_csv_with_its_options_and_refusals(home: Path, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "shapes.csv")
    pushed = run_cli(
        "dataset", "push", path, "--name", "shapes", "--label", "colour", "--description",
        "Shapes", "--license", "CC0-1.0", "--alias", "prod", "--tag", "team=vision", "--json",
    )  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr
    record = json.loads(pushed.stdout)
    assert (record["label"], record["license"], record["aliases"], record["tags"]) == (
        "colour", "CC0-1.0", ["prod"], {"team": "vision"}
    )  # fmt: skip
    assert record["profile"]["colour"]["categories"] == {"red": 10, "green": 10, "blue": 10}

    missing = run_cli("dataset", "push", path, "--name", "x", "--label", "kind")
    assert missing.returncode == 2
    assert missing.stderr == (
        "error: shapes.csv has no label column 'kind'; its columns are width, height, colour, "
        "label\n"
    )
    bad = run_cli("dataset", "split", "shapes", "--train", "0.5", "--test", "0.4")
    assert bad.returncode == 2 and "must add up to 1" in bad.stderr
    assert run_cli("dataset", "show", "nope").returncode == 3
    assert [d["name"] for d in json.loads(run_cli("dataset", "ls", "--json").stdout)] == ["shapes"]
