"""``Registry.remote(url)``: a modelport server's registry, with the local ``Registry``'s methods.

Every call is one or a few requests to the server's registry API (docs/registry-api.md), made
with ``client.api.api_session`` (bearer key, TLS from the settings). Errors come back as the
classes the server raised (rebuilt by their ``code``). Files stream both ways: a push reads
each file once, hashing as it sends, and checks the digest the server computed; a pull or a
load writes each download to disk as it arrives, verified against the manifest before it
is kept. ``load`` keeps what it downloaded in the local cache (``MODELPORT_CACHE_PATH``,
default ``$MODELPORT_HOME/cache``), so a version is downloaded once per machine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from modelport.client.api import api_session
from modelport.client.remote_transfer import download, raise_for, upload_paths
from modelport.config import Settings, VerifyPolicy, load_settings
from modelport.errors import InvalidInput, VerificationFailed
from modelport.registry.pulling import check_derived
from modelport.registry.records import Lineage, ModelSummary, ModelVersion
from modelport.registry.store import GcReport, hash_file, manifest_key
from modelport.runtimes import LoadOptions, RuntimeTable, default_runtimes
from modelport.runtimes.derived import DerivedCheck
from modelport.types import ModelRef, Signature, Tensors

if TYPE_CHECKING:
    from modelport.client.remote_datasets import RemoteDatasets
    from modelport.runtimes.checked import CheckedModel

__all__ = ["RemoteRegistry"]


def _segment(text: str) -> str:
    return quote(text, safe="")


class RemoteRegistry:
    """The registry of the server at ``url``. Thread-safe as ``httpx.Client`` is; close it
    (or use it as a context manager) to release its connections."""

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        settings: Settings | None = None,
        runtimes: RuntimeTable | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.settings = settings or load_settings()
        self._runtimes = runtimes
        self.http = api_session(self.url, api_key=api_key, settings=self.settings)
        self._verified: set[str] = set()

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> RemoteRegistry:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def datasets(self) -> RemoteDatasets:
        """The server's datasets (browse, verify, alias, delete, pull)."""
        from modelport.client.remote_datasets import RemoteDatasets

        return RemoteDatasets(self)

    @property
    def runtimes(self) -> RuntimeTable:
        """The runtimes ``load`` uses (built on first use: listing needs none)."""
        if self._runtimes is None:
            self._runtimes = default_runtimes()
        return self._runtimes

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """One request to the registry API (``path`` below ``/api/v1``); its JSON answer,
        or the error it stands for."""
        try:
            response = self.http.request(method, f"/api/v1{path}", **kwargs)
        except httpx.TransportError as exc:
            from modelport.errors import Unavailable

            raise Unavailable(f"cannot reach the registry at {self.url}: {exc}") from exc
        raise_for(response, self.url)
        return response.json() if response.content else None

    @staticmethod
    def _version_path(ref: ModelRef | str) -> str:
        target = ModelRef.coerce(ref)
        selector = target.alias if target.alias is not None else target.version
        return f"/models/{_segment(target.name)}/versions/{_segment(str(selector or 'latest'))}"

    # -- writing -------------------------------------------------------------------------

    def push(
        self,
        path: str | Path | Sequence[str | Path],
        name: str,
        *,
        aliases: Iterable[str] = (),
        tags: Mapping[str, str] | Iterable[str] | None = None,
        description: str = "",
        format: str | None = None,
        trust_pickle: bool = False,
        lineage: Lineage | None = None,
        metrics: Mapping[str, Any] | None = None,
        example: Tensors | None = None,
        signature: Signature | None = None,
        task: str | None = None,
        take_files: bool = False,
    ) -> ModelVersion:
        """``Registry.push`` on the server: the files are streamed up, then pushed there
        (checked, hashed into the store, published in one transaction). An upload that fails
        is discarded. ``take_files`` changes nothing here: local files are only read (the
        server always takes what it received)."""
        paths = [path] if isinstance(path, (str, Path)) else list(path)
        if not paths:
            raise InvalidInput("push needs the path of a model file or directory")
        upload = self.call("POST", "/uploads")["upload"]
        try:
            names = upload_paths(self.http, upload, [Path(p).expanduser() for p in paths])
            example_name = None
            if example is not None:
                example_name = _upload_example(self.http, upload, example)
            if tags is not None and not isinstance(tags, Mapping):
                tags = dict(t.partition("=")[::2] for t in tags)
            body = {
                "upload": upload,
                "paths": names,
                "aliases": list(aliases),
                "tags": dict(tags) if tags else None,
                "description": description,
                "format": format,
                "trust_pickle": trust_pickle,
                "task": task,
                "metrics": dict(metrics) if metrics else None,
                "signature": signature.to_dict() if signature else None,
                "example": example_name,
                "lineage": lineage.to_dict() if lineage else None,
            }
            found = self.call("POST", f"/models/{_segment(name)}/versions", json=body)
        except BaseException:
            with contextlib.suppress(Exception):  # must not hide the error that led here
                self.http.delete(f"/api/v1/uploads/{upload}")
            raise
        return ModelVersion.from_dict(found)

    def set_alias(
        self, ref: ModelRef | str, alias: str, *, expected_version: int | None = None
    ) -> ModelVersion:
        """Point ``alias`` at the version; ``expected_version`` makes it compare-and-set
        (``Conflict`` when the alias points elsewhere now; 0: it must not exist)."""
        target = self.get(ref)
        body = {"version": target.version, "expected_version": expected_version}
        path = f"/models/{_segment(target.model)}/aliases/{_segment(alias)}"
        return ModelVersion.from_dict(self.call("PUT", path, json=body))

    def delete_alias(self, name: str, alias: str) -> None:
        self.call("DELETE", f"/models/{_segment(name)}/aliases/{_segment(alias)}")

    def set_tags(
        self,
        ref: ModelRef | str,
        tags: Mapping[str, str] | Iterable[str] | None = None,
        *,
        remove: Iterable[str] = (),
    ) -> ModelVersion:
        if tags is not None and not isinstance(tags, Mapping):
            tags = dict(t.partition("=")[::2] for t in tags)
        body = {"set": dict(tags or {}), "remove": list(remove)}
        return ModelVersion.from_dict(
            self.call("PATCH", f"{self._version_path(ref)}/tags", json=body)
        )

    def set_description(self, ref: ModelRef | str, description: str) -> None:
        target = ModelRef.coerce(ref)
        if target.version is None and target.alias is None:
            path = f"/models/{_segment(target.name)}/description"
        else:
            path = f"{self._version_path(target)}/description"
        self.call("PUT", path, json={"description": description})

    def set_metrics(self, ref: ModelRef | str, metrics: Mapping[str, Any]) -> ModelVersion:
        body = {"metrics": dict(metrics)}
        return ModelVersion.from_dict(
            self.call("POST", f"{self._version_path(ref)}/metrics", json=body)
        )

    def set_serving_settings(
        self, ref: ModelRef | str, settings: Mapping[str, Any] | None
    ) -> ModelVersion:
        body = {"serving": dict(settings) if settings is not None else None}
        return ModelVersion.from_dict(
            self.call("PUT", f"{self._version_path(ref)}/serving", json=body)
        )

    def delete(self, ref: ModelRef | str, *, force: bool = False) -> ModelVersion:
        target = ModelRef.coerce(ref)
        if target.version is None and target.alias is None:
            raise InvalidInput(
                f"say which version to delete, e.g. {target.name}@3, or delete the whole model"
            )
        params = {"force": "true"} if force else None
        return ModelVersion.from_dict(
            self.call("DELETE", self._version_path(target), params=params)
        )

    def delete_model(self, name: str, *, force: bool = False) -> list[ModelVersion]:
        params = {"force": "true"} if force else None
        found = self.call("DELETE", f"/models/{_segment(name)}", params=params)
        return [ModelVersion.from_dict(v) for v in found["removed"]]

    def gc(self, *, wait: float = 60.0) -> GcReport:
        """The server's garbage collection (``wait`` is the server's to choose)."""
        found = self.call("POST", "/gc")
        known = {f.name for f in dataclasses.fields(GcReport)}
        return GcReport(**{k: v for k, v in found.items() if k in known})

    # -- reading -------------------------------------------------------------------------

    def get(self, ref: ModelRef | str) -> ModelVersion:
        return ModelVersion.from_dict(self.call("GET", self._version_path(ref)))

    def list_models(self) -> list[ModelSummary]:
        return [ModelSummary.from_dict(m) for m in self.call("GET", "/models")]

    def list_versions(self, name: str) -> list[ModelVersion]:
        found = self.call("GET", f"/models/{_segment(name)}")
        return [ModelVersion.from_dict(v) for v in found["versions"]]

    def verify(self, ref: ModelRef | str) -> list[str]:
        """The server re-hashes the version's stored files; one line per problem."""
        return list(self.call("POST", f"{self._version_path(ref)}/verify")["problems"])

    def verify_derived(self, ref: ModelRef | str) -> list[DerivedCheck]:
        """Re-hash what runtimes derived on this machine from the downloaded version."""
        return check_derived(self._derived_dir(self.get(ref)))

    def pull(self, ref: ModelRef | str, dest: str | Path) -> ModelVersion:
        """Download the version's files into directory ``dest``, each verified against its
        manifest digest before it is kept."""
        record = self.get(ref)
        root = Path(dest).expanduser()
        for entry in record.files:
            download(self.http, self._version_path(record.ref), entry, root, record.ref)
        return record

    def load(
        self,
        ref: ModelRef | str,
        options: LoadOptions | None = None,
        *,
        verify: VerifyPolicy | None = None,
    ) -> CheckedModel:
        """Download the version (once per machine, verified) and load it here."""
        record = self.get(ref)
        self.runtimes.get(record.format)  # an unknown format fails before any download
        key = manifest_key(record.files)
        directory = self._cache() / "checkouts" / key
        policy = verify or self.settings.verify
        if not directory.is_dir():
            building = self._cache() / "checkouts" / f".tmp-{uuid.uuid4().hex}"
            try:
                self.pull(record.ref, building)
                building.mkdir(parents=True, exist_ok=True)
                building.rename(directory)
            except OSError:
                if not directory.is_dir():  # another process won the rename: theirs is fine
                    raise
            finally:
                shutil.rmtree(building, ignore_errors=True)
            self._verified.add(key)
        elif policy == "always" or (policy == "first-load" and key not in self._verified):
            _verify_files(directory, record)
            self._verified.add(key)
        given = options or LoadOptions()
        recorded = dataclasses.replace(
            given,
            metadata={**record.metadata, **given.metadata},
            trust_pickle=record.trust_pickle,
            derived_dir=given.derived_dir or self._derived_dir(record),
            verify_derived=given.verify_derived or policy != "never",
        )
        return self.runtimes.load(record.format, directory / record.entry, recorded)

    def _cache(self) -> Path:
        return self.settings.resolved_cache_path() / "remote"

    def _derived_dir(self, record: ModelVersion) -> Path:
        return self._cache() / "derived" / manifest_key(record.files)


def _verify_files(directory: Path, record: ModelVersion) -> None:
    for entry in record.files:
        path = directory / entry.path
        digest, size = hash_file(path) if path.exists() else ("", -1)
        if (digest, size) != (entry.digest, entry.size):
            shutil.rmtree(directory, ignore_errors=True)  # downloaded again on the next load
            raise VerificationFailed(
                f"{record.ref}: the downloaded copy of {entry.path!r} changed since it was "
                "verified; it was removed: load again to download it afresh"
            )


def _upload_example(http: httpx.Client, upload: str, example: Tensors) -> str:
    import io

    import numpy as np

    from modelport.client.remote_transfer import send_file

    buffer = io.BytesIO()
    np.savez(buffer, **example)  # type: ignore[arg-type]
    name = f".example-{uuid.uuid4().hex[:8]}.npz"
    send_file(http, upload, name, io.BytesIO(buffer.getvalue()), len(buffer.getvalue()))
    return name
