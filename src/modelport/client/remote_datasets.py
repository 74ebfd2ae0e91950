"""``Registry.remote(url).datasets``: a server's datasets over the registry API, with the
methods of the local ``Registry().datasets``: push (the file streamed up, then profiled and
stored by the server), split, builtin, list, versions, get, verify, set_alias, delete,
load (the files downloaded and verified, the rows read here) and pull.
"""

from __future__ import annotations

import builtins
import contextlib
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from modelport.client.remote_transfer import download, upload_paths
from modelport.datasets.records import DatasetRef, DatasetSummary, DatasetVersion
from modelport.errors import InvalidInput

if TYPE_CHECKING:
    from modelport.client.remote_registry import RemoteRegistry
    from modelport.datasets.view import DatasetView

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

    def push(
        self,
        path: str | Path,
        name: str,
        *,
        label: str | None = None,
        description: str = "",
        license: str = "",
        aliases: Iterable[str] = (),
        tags: Mapping[str, str] | Iterable[str] | None = None,
        source: str | None = None,
    ) -> DatasetVersion:
        """``Registry().datasets.push`` on the server: the file (or image folder) is
        streamed up, then read, profiled and stored there; bad data stores nothing."""
        registry = self._registry
        upload = registry.call("POST", "/uploads")["upload"]
        try:
            (member,) = upload_paths(registry.http, upload, [Path(path).expanduser()])
            if tags is not None and not isinstance(tags, Mapping):
                tags = dict(t.partition("=")[::2] for t in tags)
            body = {
                "upload": upload, "path": member, "label": label, "description": description,
                "license": license, "aliases": builtins.list(aliases),
                "tags": dict(tags) if tags else None, "source": source,
            }  # fmt: skip
            found = registry.call("POST", f"/datasets/{quote(name, safe='')}/versions", json=body)
        except BaseException:
            with contextlib.suppress(Exception):  # must not hide the error that led here
                registry.http.delete(f"/api/v1/uploads/{upload}")
            raise
        return DatasetVersion.from_dict(found)

    def split(
        self,
        ref: DatasetRef | str,
        fractions: Mapping[str, float],
        *,
        seed: int = 0,
        stratify: str | None = None,
        name: str | None = None,
        aliases: Iterable[str] = (),
    ) -> DatasetVersion:
        """``Registry().datasets.split`` on the server."""
        body = {
            "fractions": dict(fractions), "seed": seed, "stratify": stratify, "name": name,
            "aliases": builtins.list(aliases),
        }  # fmt: skip
        found = self._registry.call("POST", f"{self._version_path(ref)}/split", json=body)
        return DatasetVersion.from_dict(found)

    def builtin(self, which: str, *, name: str | None = None) -> DatasetVersion:
        """``Registry().datasets.builtin`` on the server (its scikit-learn's files)."""
        path = f"/datasets/{quote(name or which, safe='')}/builtin"
        return DatasetVersion.from_dict(self._registry.call("POST", path, json={"which": which}))

    def load(self, ref: DatasetRef | str) -> DatasetView:
        """The rows ``ref`` names, read here from the version's files, downloaded and
        verified into a temporary directory that is removed afterwards."""
        from modelport.datasets.catalog import read_view

        target = DatasetRef.coerce(ref)
        with tempfile.TemporaryDirectory(prefix="modelport-dataset-") as scratch:
            record = self.pull(str(target.ref), scratch)
            return read_view(record, Path(scratch)).select(target.split)
