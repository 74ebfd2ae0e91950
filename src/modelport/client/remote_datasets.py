"""``Registry.remote(url).datasets``: a server's datasets, browsed and curated over the
registry API (list, versions, get, verify, set_alias, delete, pull).

Pushing, splitting and loading rows run where the registry is (``modelport dataset
push|split|builtin``, ``registry.datasets.load``): over HTTP they say so.
"""

from __future__ import annotations

import builtins
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import quote

from modelport.client.remote_transfer import download
from modelport.datasets.records import DatasetRef, DatasetSummary, DatasetVersion
from modelport.errors import InvalidInput

if TYPE_CHECKING:
    from modelport.client.remote_registry import RemoteRegistry

__all__ = ["RemoteDatasets"]


class RemoteDatasets:
    """The datasets of a ``RemoteRegistry``."""

    def __init__(self, registry: RemoteRegistry) -> None:
        self._registry = registry

    @staticmethod
    def _version_path(ref: DatasetRef | str) -> str:
        target = DatasetRef.coerce(ref)
        selector = target.ref.alias if target.ref.alias is not None else target.ref.version
        split = f":{target.split}" if target.split else ""
        name = quote(target.name, safe="")
        return f"/datasets/{name}/versions/{quote(str(selector or 'latest') + split, safe='')}"

    def get(self, ref: DatasetRef | str) -> DatasetVersion:
        found = self._registry.call("GET", self._version_path(ref))
        return DatasetVersion.from_dict(found)

    def list(self) -> builtins.list[DatasetSummary]:
        return [DatasetSummary.from_dict(d) for d in self._registry.call("GET", "/datasets")]

    def versions(self, name: str) -> builtins.list[DatasetVersion]:
        found = self._registry.call("GET", f"/datasets/{quote(name, safe='')}")
        return [DatasetVersion.from_dict(v) for v in found["versions"]]

    def verify(self, ref: DatasetRef | str) -> builtins.list[str]:
        found = self._registry.call("POST", f"{self._version_path(ref)}/verify")
        return builtins.list(found["problems"])

    def set_alias(self, ref: DatasetRef | str, alias: str) -> DatasetVersion:
        target = self.get(ref)
        path = f"/datasets/{quote(target.name, safe='')}/aliases/{quote(alias, safe='')}"
        return DatasetVersion.from_dict(
            self._registry.call("PUT", path, json={"version": target.version})
        )

    def delete(self, ref: DatasetRef | str, *, force: bool = False) -> DatasetVersion:
        target = DatasetRef.coerce(ref).ref
        if target.version is None and target.alias is None:
            raise InvalidInput(f"say which version to delete, e.g. {target.name}@1")
        params = {"force": "true"} if force else None
        return DatasetVersion.from_dict(
            self._registry.call("DELETE", self._version_path(ref), params=params)
        )

    def pull(self, ref: DatasetRef | str, dest: str | Path) -> DatasetVersion:
        """Download the version's files into ``dest``, each verified on the way."""
        record = self.get(ref)
        for entry in record.files:
            download(self._registry.http, f"{self._version_path(record.ref)}", entry,
                     Path(dest).expanduser(), record.ref)  # fmt: skip
        return record

    def push(self, *_args: Any, **_kwargs: Any) -> NoReturn:
        _local_only("push")

    def split(self, *_args: Any, **_kwargs: Any) -> NoReturn:
        _local_only("split")

    def builtin(self, *_args: Any, **_kwargs: Any) -> NoReturn:
        _local_only("builtin")

    def load(self, *_args: Any, **_kwargs: Any) -> NoReturn:
        _local_only("load")


def _local_only(what: str) -> NoReturn:
    raise InvalidInput(
        f"dataset {what} runs where the registry is, not over the registry API yet; run it on "
        "the server's machine (modelport dataset ...), or pull the files (datasets.pull)"
    )
