"""`Registry.remote` and the CLI's `--remote` against a real `modelport serve` hub: the same
methods as the local registry, files verified both ways, errors rebuilt by code."""

from __future__ import annotations

import inspect
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from modelport import Registry, Settings
from modelport.client.remote_datasets import RemoteDatasets
from modelport.client.remote_registry import RemoteRegistry
from modelport.datasets.catalog import Datasets
from modelport.errors import Conflict, InvalidInput, NotFound, VerificationFailed
from modelport.registry.records import Lineage
from tests.onnx_models import make_add_model
from tests.serving_fixtures import CLI, Server, cli_env, running_server


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("hub") / "home", [], ["--no-grpc"]) as server:
        yield server


@pytest.fixture
def remote(hub: Server, home: Path) -> Iterator[RemoteRegistry]:
    """The hub's registry; ``home`` (this test's own) holds the client's download cache."""
    with Registry.remote(hub.http_url) as registry:
        yield registry


def cli(
    home: Path, *args: str | Path, remote: str | None = None
) -> subprocess.CompletedProcess[str]:
    extra = {"MODELPORT_REMOTE": remote} if remote else {}
    return subprocess.run(
        [CLI, *map(str, args)], env=cli_env(home, extra), capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip


def public_methods(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in inspect.getmembers(cls, callable)
        if not name.startswith("_")
    }


def test_remote_registry_has_the_methods_of_registry() -> None:
    local = public_methods(Registry)
    remote = public_methods(RemoteRegistry)
    local.pop("remote")  # the constructor of the remote one
    remote.pop("call")  # one raw request to the API: nothing local to match
    assert sorted(local) == sorted(remote)
    for name, signature in local.items():
        assert list(signature.parameters) == list(remote[name].parameters), name
    datasets = public_methods(Datasets)
    remote_datasets = public_methods(RemoteDatasets)
    assert set(datasets) <= set(remote_datasets)
    assert set(remote_datasets) - set(datasets) == {"pull"}
    for name, signature in datasets.items():
        assert list(signature.parameters) == list(remote_datasets[name].parameters), name


def test_datasets_are_browsed_and_curated_remotely(
    remote: RemoteRegistry, hub: Server, home: Path, tmp_path: Path
) -> None:
    made = cli(hub.home, "dataset", "builtin", "iris", "--name", "flowers", "--json")
    assert made.returncode == 0, made.stderr
    local = json.loads(made.stdout)
    assert "flowers" in [d.name for d in remote.datasets.list()]
    version = remote.datasets.get("flowers@1")
    assert version.to_dict() == local
    assert [v.version for v in remote.datasets.versions("flowers")] == [1]
    assert remote.datasets.verify("flowers@1") == []
    assert remote.datasets.set_alias("flowers@1", "gold").aliases == ("gold",)
    pulled = remote.datasets.pull("flowers@gold", tmp_path / "data")
    for entry in pulled.files:
        assert (tmp_path / "data" / entry.path).stat().st_size == entry.size
    # Pushed, split and read back over HTTP: the server profiles what it received.
    table = tmp_path / "table.csv"
    table.write_text("x,y,label\n" + "".join(f"{i},{i * 0.5},{i % 2}\n" for i in range(40)))
    pushed = remote.datasets.push(table, "table", license="CC0", aliases=["raw"], tags=["k=v"])
    assert (pushed.ref, pushed.rows, pushed.license, pushed.aliases) == (
        "table@1",
        40,
        "CC0",
        ("raw",),
    )
    split = remote.datasets.split("table@raw", {"train": 0.75, "test": 0.25}, stratify="label")
    assert split.splits == {"train": 30, "test": 10}
    train = remote.datasets.load("table@2:train")
    assert train.rows == 30 and set(train.columns) == {"x", "y", "label"}
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("x,label\n1,0\n2\n")
    with pytest.raises(InvalidInput):
        remote.datasets.push(ragged, "ragged")
    assert "ragged" not in [d.name for d in remote.datasets.list()]

    url = hub.http_url
    shown = json.loads(cli(home, "dataset", "show", "flowers@gold", "--json", remote=url).stdout)
    assert shown["sha256"] == local["sha256"]
    made = cli(home, "dataset", "builtin", "wine", "--json", remote=url)
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["ref"] == "wine@1"
    with pytest.raises(Conflict):
        remote.datasets.delete("flowers@1")
    removed = cli(home, "dataset", "rm", "flowers@1", "--force", remote=url)
    assert removed.returncode == 0, removed.stderr
    assert remote.datasets.versions("flowers") == []


def test_push_get_edit_and_delete_remotely(
    remote: RemoteRegistry, hub: Server, iris_onnx: Path
) -> None:
    pushed = remote.push(iris_onnx, "iris", aliases=["prod"], tags=["team=a"], description="d")
    assert (pushed.aliases, pushed.tags, pushed.description) == (("prod",), {"team": "a"}, "d")
    with Registry(Settings(home=hub.home)) as on_server:
        assert on_server.get("iris@prod") == pushed  # the same record, field for field
    assert remote.get("iris@prod") == pushed
    assert [m.name for m in remote.list_models()] == ["iris"]

    child = remote.push(
        iris_onnx, "iris", lineage=Lineage(pushed.ref, "copy", {"why": "test"}), metrics={"a": 1}
    )
    assert child.lineage == Lineage(pushed.ref, "copy", {"why": "test"})
    assert remote.set_tags(child.ref, {"x": "1"}, remove=["team"]).tags == {"x": "1"}
    remote.set_description(child.ref, "child")
    remote.set_description("iris", "the model")
    assert remote.get(child.ref).description == "child"
    assert remote.list_models()[0].description == "the model"
    assert remote.set_metrics(child.ref, {"b": 2}).metrics == {"a": 1, "b": 2}
    assert remote.set_serving_settings(child.ref, {"instances": 1}).serving_settings == {
        "instances": 1
    }
    assert remote.verify(child.ref) == []

    with pytest.raises(Conflict, match="points at iris@1, not @2"):
        remote.set_alias(child.ref, "prod", expected_version=2)
    assert remote.set_alias(child.ref, "prod", expected_version=pushed.version).version == 2
    with pytest.raises(Conflict):
        remote.delete(child.ref)
    with pytest.raises(NotFound, match="no model named 'nosuch'"):
        remote.get("nosuch")
    with pytest.raises(InvalidInput, match="say which version"):
        remote.delete("iris")
    remote.delete_alias("iris", "prod")
    assert remote.delete(child.ref).version == 2
    assert [v.version for v in remote.list_versions("iris")] == [1]
    assert [v.ref for v in remote.delete_model("iris")] == ["iris@1"]
    assert remote.gc().blobs_removed >= 0


def test_pull_and_load_verify_what_arrives(
    remote: RemoteRegistry, hub: Server, home: Path, iris_onnx: Path, tmp_path: Path
) -> None:
    pushed = remote.push(iris_onnx, "pulled")
    target = remote.pull(pushed.ref, tmp_path / "out")
    assert target == pushed
    assert (tmp_path / "out" / "iris.onnx").read_bytes() == iris_onnx.read_bytes()

    model = remote.load(pushed.ref)
    try:
        inputs = {model.signature.inputs[0].name: np.ones((2, 4), np.float32)}
        outputs = model.predict(inputs)
    finally:
        model.close()
    with Registry(Settings(home=hub.home)) as on_server:
        local = on_server.load(pushed.ref)
        try:
            expected = local.predict(inputs)
        finally:
            local.close()
    for name, value in expected.items():
        np.testing.assert_array_equal(outputs[name], value)
    assert all(check.intact for check in remote.verify_derived(pushed.ref))


def test_a_download_damaged_in_the_store_is_refused(
    remote: RemoteRegistry, hub: Server, tmp_path: Path
) -> None:
    # A model of its own: its blob is damaged below, and blobs are shared by digest.
    pushed = remote.push(make_add_model(tmp_path / "add.onnx", shape=(7, 3)), "damaged")
    blob = next((hub.home / "artifacts").rglob(pushed.files[0].digest))
    blob.chmod(0o644)
    blob.write_bytes(b"\0" * pushed.files[0].size)
    with pytest.raises(VerificationFailed, match="damaged"):
        remote.pull(pushed.ref, tmp_path / "out")
    assert not any((tmp_path / "out").rglob("*"))
    assert remote.verify(pushed.ref) != []
    remote.delete_model("damaged")


def test_a_failed_remote_push_discards_its_upload(
    remote: RemoteRegistry, hub: Server, tmp_path: Path
) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(Exception, match="junk"):
        remote.push(junk, "junk")
    assert not any((hub.home / "uploads").glob("[0-9a-f]*"))
    with pytest.raises(NotFound):
        remote.get("junk")


def test_every_registry_command_runs_against_the_server(
    hub: Server, home: Path, iris_onnx: Path, tmp_path: Path
) -> None:
    url = hub.http_url
    pushed = cli(home, "--remote", url, "push", iris_onnx, "--name", "clim", "--alias", "prod")
    assert pushed.returncode == 0, pushed.stderr
    assert "pushed clim@1" in pushed.stdout
    assert not (home / "registry.db").exists()  # nothing went to the local registry

    listed = json.loads(cli(home, "ls", "--json", remote=url).stdout)
    assert "clim" in [m["name"] for m in listed]
    shown = json.loads(cli(home, "show", "clim@prod", "--json", remote=url).stdout)
    assert (
        shown["files"][0]["sha256"]
        == json.loads(cli(hub.home, "show", "clim@1", "--json").stdout)["files"][0]["sha256"]
    )

    cli(home, "push", iris_onnx, "--name", "clim", remote=url)
    conflict = cli(home, "alias", "clim@2", "prod", "--expect", "2", remote=url)
    assert conflict.returncode != 0 and "not @2 as expected" in conflict.stderr
    moved = cli(home, "alias", "clim@2", "prod", "--expect", "1", remote=url)
    assert moved.returncode == 0, moved.stderr

    assert "clim@2: ok" in cli(home, "verify", "clim@prod", remote=url).stdout
    pulled = cli(home, "pull", "clim@prod", "-o", tmp_path / "pulled", remote=url)
    assert pulled.returncode == 0, pulled.stderr
    assert (tmp_path / "pulled" / "iris.onnx").read_bytes() == iris_onnx.read_bytes()
    assert cli(home, "rm", "clim@1", remote=url).returncode == 0
    assert cli(home, "gc", remote=url).returncode == 0
    assert [
        v["version"] for v in json.loads(cli(home, "ls", "clim", "--json", remote=url).stdout)
    ] == [2]

    refused = cli(home, "convert", "clim@2", remote=url)
    assert refused.returncode != 0 and "local registry only" in refused.stderr


def test_pull_works_on_the_local_registry(home: Path, iris_onnx: Path, tmp_path: Path) -> None:
    assert cli(home, "push", iris_onnx, "--name", "local").returncode == 0
    pulled = cli(home, "pull", "local", "-o", tmp_path / "copy", "--json")
    assert pulled.returncode == 0, pulled.stderr
    assert json.loads(pulled.stdout)["ref"] == "local@1"
    assert (tmp_path / "copy" / "iris.onnx").read_bytes() == iris_onnx.read_bytes()


def test_the_global_remote_makes_predict_ask_the_server(home: Path, iris_onnx: Path) -> None:
    assert cli(home, "push", iris_onnx, "--name", "iris", "--alias", "prod").returncode == 0
    with running_server(home, ["iris@prod"], ["--no-grpc"]) as server:
        # No local registry on the client's side: the alias is resolved by the server's.
        client_home = home.parent / "client"
        answer = cli(
            client_home, "predict", "iris@prod", "-i", '{"input": [[5.1, 3.5, 1.4, 0.2]]}',
            remote=server.http_url,
        )  # fmt: skip
    assert answer.returncode == 0, answer.stderr
    assert set(json.loads(answer.stdout)) == {"label", "probabilities"}
    assert not (client_home / "registry.db").exists()


def test_a_directory_pushed_remotely_keeps_its_layout(
    remote: RemoteRegistry, home: Path, tmp_path: Path
) -> None:
    directory = tmp_path / "model"
    directory.mkdir()
    make_add_model(directory / "model.onnx")
    (directory / "notes" / "deep").mkdir(parents=True)
    (directory / "notes" / "deep" / "readme.txt").write_text("how it was made")
    pushed = remote.push(directory, "layout")
    with Registry(Settings(home=home)) as local:
        expected = local.push(directory, "layout")
    assert pushed.files == expected.files and pushed.entry == expected.entry
    remote.pull(pushed.ref, tmp_path / "back")
    assert (tmp_path / "back" / "notes" / "deep" / "readme.txt").read_text() == "how it was made"
