"""The ``Registry`` facade: push, find, alias, load, verify and delete model versions."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, insert, select

from modelport.config import Settings, VerifyPolicy, load_settings
from modelport.errors import (
    Conflict,
    InvalidInput,
    Unavailable,
    VerificationFailed,
)
from modelport.registry import editing, pulling, pushing, queries, schema
from modelport.registry.db import open_database, read_transaction, write_transaction
from modelport.registry.records import Lineage, ModelSummary, ModelVersion
from modelport.registry.sources import refuse_special_files
from modelport.registry.staging import inspect_while_staging, put_file
from modelport.registry.store import (
    BlobStore,
    CheckoutCache,
    FileEntry,
    GcReport,
    References,
    checkout_cache_for,
    hash_file,
    manifest_key,
    open_store,
    protect,
    safe_relative_path,
    verify_blobs,
)
from modelport.runtimes import (
    LoadOptions,
    PushOptions,
    RuntimeTable,
    default_runtimes,
)
from modelport.runtimes.derived import DerivedCheck
from modelport.security.audit import AuditLog
from modelport.security.audit import record as record_entry
from modelport.types import ModelRef, Signature, Tensors, validate_alias, validate_name

if TYPE_CHECKING:
    from modelport.client.remote_registry import RemoteRegistry
    from modelport.datasets.catalog import Datasets
    from modelport.runtimes.checked import CheckedModel

__all__ = ["Registry"]


class Registry:
    """A model registry: metadata in a SQL database, files in a blob store.

    Every method is safe to call from several processes at once; each write is one DB
    transaction, published only after its files are stored and hashed.

    ``store`` and ``checkout`` default to what ``settings`` name: the local directory
    store under ``MODELPORT_HOME`` (or ``MODELPORT_STORE_URL``), and its checkout cache.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        runtimes: RuntimeTable | None = None,
        store: BlobStore | None = None,
        checkout: CheckoutCache | None = None,
    ) -> None:
        self.settings = settings or load_settings()
        self.runtimes = runtimes or default_runtimes()
        inner = store or open_store(self.settings)
        self.engine = open_database(
            self.settings.resolved_db_url(),
            holding_store=lambda: inner.url if inner.holds_blobs() else None,
        )
        # Encryption at rest (docs/encryption.md) wraps whichever store is in use.
        self.store: BlobStore = protect(inner, self.engine, self.settings)
        self.checkout = checkout or checkout_cache_for(self.store, self.settings)
        self._verified: set[str] = set()

    @staticmethod
    def remote(url: str, api_key: str | None = None) -> RemoteRegistry:
        """The registry of the modelport server at ``url`` (``https://hub:8000``), with the
        same methods as this one; ``api_key`` defaults to ``MODELPORT_API_KEY``."""
        from modelport.client.remote_registry import RemoteRegistry

        return RemoteRegistry(url, api_key=api_key)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

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
        """Store the model at ``path`` as the next version of ``name``.

        ``path`` may be a list when a format spreads over named files (Caffe's prototxt and
        weights): the first is the model, the rest go to the runtime as companions.
        ``example``/``signature`` describe formats that do not record their own inputs.

        Anything that is neither a regular file nor a directory (a named pipe, a device) is
        refused before it is read. The model is validated and its signature read before
        anything is stored; files are hashed while copied, and published right before the
        one transaction that records the version, so a failure or a kill at any point
        leaves no half version. ``take_files``: the files are the registry's to keep (the
        registry API's received uploads): a local store links them in instead of copying
        them, and the caller must not change them afterwards.

        Raises:
            InvalidName, InvalidModel, UnsupportedFormat, NotFound (lineage parent),
            StorageError (disk full, DB refused).
        """
        validate_name(name)
        alias_list = [validate_alias(a) for a in aliases]
        tag_map = editing.tag_map(tags)
        metric_map = editing.json_dict(metrics, "metrics")
        paths = [path] if isinstance(path, (str, Path)) else list(path)
        if not paths:
            raise InvalidInput("push needs the path of a model file or directory")
        source, *companions = (Path(p).expanduser() for p in paths)
        for named in (source, *companions):
            refuse_special_files(named)
        options = PushOptions(
            example=example,
            signature=signature,
            trust_pickle=trust_pickle,
            task=task,
            companions=tuple(companions),
        )
        runtime = self.runtimes.get(format) if format else self.runtimes.detect(source)
        with self.store.writing() as writer:
            info, early = inspect_while_staging(runtime, source, options, writer, take=take_files)
            runtime_metadata = editing.json_dict(info.metadata, "runtime metadata")
            files = info.files
            entries = []
            for rel in files.paths:
                safe_relative_path(rel)
                path = files.sources.get(rel, files.root / rel)
                if early is not None and path == source:
                    blob = early
                else:
                    blob = put_file(writer, path, take=take_files)
                entries.append(FileEntry(rel, blob.digest, blob.size))
            writer.publish({e.digest for e in entries})
            number = pushing.insert_version(
                self.engine,
                name=name,
                row={
                    "format": runtime.format,
                    "entry": info.files.entry,
                    "signature": info.signature.to_dict(),
                    "size": sum(e.size for e in entries),
                    "description": description,
                    "trust_pickle": trust_pickle,
                    "metrics": metric_map,
                    "operation": lineage.operation if lineage else None,
                    "parameters": editing.json_dict(
                        lineage.parameters if lineage else None, "lineage"
                    ),
                    "metadata": runtime_metadata,
                },
                parent=lineage.parent if lineage else None,
                entries=entries,
                tags=tag_map,
                aliases=alias_list,
            )
        return self.get(ModelRef(name, version=number))

    def set_alias(
        self, ref: ModelRef | str, alias: str, *, expected_version: int | None = None
    ) -> ModelVersion:
        """Point ``alias`` of the referenced model at the referenced version.

        ``expected_version``: compare-and-set; the alias must point at that version number
        now (0: must not exist yet), else ``Conflict`` (see ``editing.set_alias``). A move
        so refused is in the audit log too (outcome ``refused``): the deployer who lost the
        race is on record.
        """
        target = ModelRef.coerce(ref)
        try:
            with write_transaction(self.engine) as conn:
                editing.set_alias(conn, target, alias, expected_version)
        except Conflict as exc:
            detail = {"alias": alias, "to": str(target), "expected": expected_version}
            AuditLog(self.engine).append(
                "alias.set",
                f"{target.name}@{alias}",
                outcome="refused",
                detail={**detail, "error": str(exc)},
            )
            raise
        return self.get(ModelRef(target.name, alias=alias))

    def delete_alias(self, name: str, alias: str) -> None:
        """Remove an alias; ``NotFound`` if the model does not have it."""
        with write_transaction(self.engine) as conn:
            editing.delete_alias(conn, name, alias)

    def set_tags(
        self,
        ref: ModelRef | str,
        tags: Mapping[str, str] | Iterable[str] | None = None,
        *,
        remove: Iterable[str] = (),
    ) -> ModelVersion:
        """Add or replace ``tags`` (``{"k": "v"}`` or ``["k=v"]``) and remove ``remove``."""
        target = ModelRef.coerce(ref)
        with write_transaction(self.engine) as conn:
            editing.set_tags(conn, target, tags, remove)
        return self.get(target)

    def set_description(self, ref: ModelRef | str, description: str) -> None:
        """The description of a version (``iris@2``) or of the model (``iris``)."""
        with write_transaction(self.engine) as conn:
            editing.set_description(conn, ModelRef.coerce(ref), description)

    def set_metrics(self, ref: ModelRef | str, metrics: Mapping[str, Any]) -> ModelVersion:
        """Merge ``metrics`` into the version's metrics (evaluation jobs use this)."""
        target = ModelRef.coerce(ref)
        with write_transaction(self.engine) as conn:
            editing.set_metrics(conn, target, metrics)
        return self.get(target)

    def set_serving_settings(
        self, ref: ModelRef | str, settings: Mapping[str, Any] | None
    ) -> ModelVersion:
        """Store the serving settings ``serve`` uses for this version (``modelport tune``
        writes them) in its metadata under ``serving``; None removes them."""
        target = ModelRef.coerce(ref)
        with write_transaction(self.engine) as conn:
            editing.set_serving_settings(conn, target, settings)
        return self.get(target)

    def delete(self, ref: ModelRef | str, *, force: bool = False) -> ModelVersion:
        """Delete one version. Refuses while an alias points at it, unless ``force``."""
        target = ModelRef.coerce(ref)
        if target.version is None and target.alias is None:
            raise InvalidInput(
                f"say which version to delete, e.g. {target.name}@3, or delete the whole model"
            )
        with write_transaction(self.engine) as conn:
            _, vid = queries.resolve(conn, target)
            (record,) = queries.load_versions(conn, [vid])
            if record.aliases and not force:
                raise Conflict(
                    f"{record.ref} is what alias {', '.join(record.aliases)} points at; move the "
                    "alias first (modelport alias) or pass --force"
                )
            conn.execute(delete(schema.aliases).where(schema.aliases.c.version_id == vid))
            conn.execute(delete(schema.versions).where(schema.versions.c.id == vid))
            detail = {"force": force, "aliases": list(record.aliases)}
            record_entry(conn, "version.delete", str(record.ref), detail=detail)
        self._sweep()
        return record

    def delete_model(self, name: str, *, force: bool = False) -> list[ModelVersion]:
        """Delete a model and all its versions. Refuses while it has aliases, unless ``force``.

        The name keeps its last version number: pushed again, it starts after it.
        """
        with write_transaction(self.engine) as conn:
            mid = queries.model_id(conn, validate_name(name))
            records = queries.load_versions(conn, queries.version_ids_of(conn, mid))
            aliased = [r.ref for r in records if r.aliases]
            if aliased and not force:
                raise Conflict(f"model {name!r} has aliases on {', '.join(aliased)}; pass --force")
            last = conn.execute(
                select(schema.models.c.last_version).where(schema.models.c.id == mid)
            ).scalar_one()
            conn.execute(delete(schema.aliases).where(schema.aliases.c.model_id == mid))
            conn.execute(delete(schema.versions).where(schema.versions.c.model_id == mid))
            conn.execute(delete(schema.models).where(schema.models.c.id == mid))
            conn.execute(insert(schema.retired_models).values(name=name, last_version=last))
            detail = {"force": force, "versions": [r.version for r in records]}
            record_entry(conn, "model.delete", name, detail=detail)
        self._sweep()
        return records

    def _sweep(self) -> None:
        # Freeing space right away is a courtesy; when a push holds the store, gc does it later.
        with contextlib.suppress(Unavailable):
            self.gc(wait=2.0)

    def gc(self, *, wait: float = 60.0) -> GcReport:
        """Remove what no version references: blobs, checkouts, derived files (optimized
        graphs), and the staging of dead pushes. A collection that removed anything is in
        the audit log (``gc``, with the report as its detail).

        Raises:
            Unavailable: a push held the store for ``wait`` seconds.
        """
        stored = self.store.collect_garbage(self._references, wait=wait)
        report = stored + self.checkout.collect_garbage(self._references, wait=wait)
        if report != GcReport():
            AuditLog(self.engine).append("gc", detail=dataclasses.asdict(report))
        return report

    def _references(self) -> References:
        # Called by the store under its exclusive lock, never before: a push that commits
        # while gc waits for the lock must be seen, or its blobs would be deleted.
        # Dataset versions keep their files in the same store: they are references too.
        with read_transaction(self.engine) as conn:
            manifests = [
                *queries.all_manifests(conn).values(),
                *queries.all_manifests(conn, datasets=True).values(),
            ]
        return References(
            digests=frozenset(e.digest for files in manifests for e in files),
            manifests=frozenset(manifest_key(files) for files in manifests),
        )

    # -- reading -------------------------------------------------------------------------

    @property
    def datasets(self) -> Datasets:
        """The registry's datasets: push, split, load (see ``modelport.datasets``)."""
        from modelport.datasets.catalog import Datasets

        return Datasets(self)

    def get(self, ref: ModelRef | str) -> ModelVersion:
        """The version a reference names (``name`` alone means the latest)."""
        with read_transaction(self.engine) as conn:
            _, vid = queries.resolve(conn, ModelRef.coerce(ref))
            return queries.load_versions(conn, [vid])[0]

    def list_models(self) -> list[ModelSummary]:
        with read_transaction(self.engine) as conn:
            return queries.list_models(conn)

    def list_versions(self, name: str) -> list[ModelVersion]:
        with read_transaction(self.engine) as conn:
            mid = queries.model_id(conn, validate_name(name))
            return queries.load_versions(conn, queries.version_ids_of(conn, mid))

    def verify(self, ref: ModelRef | str) -> list[str]:
        """Re-hash the version's files as the store holds them (for S3, the objects
        themselves, streamed); one line per problem, empty when intact."""
        return verify_blobs(self.store, self.get(ref).files)

    def verify_derived(self, ref: ModelRef | str) -> list[DerivedCheck]:
        """Re-hash the files runtimes derived from the version on this machine (optimized
        graphs, what is actually served) against the digests recorded when they were built.

        A copy that fails is removed: the next load builds it again from the stored files.
        Returns one result per copy found (none when the version was never loaded here).
        """
        record = self.get(ref)
        return pulling.check_derived(self.checkout.derived(list(record.files)))

    def pull(self, ref: ModelRef | str, dest: str | Path) -> ModelVersion:
        """Copy the version's files to directory ``dest`` at their relative paths, each
        verified against its manifest digest on the way (a file there is replaced).

        Raises:
            NotFound, VerificationFailed, StorageError.
        """
        record = self.get(ref)
        directory = self.checkout.checkout(list(record.files))
        pulling.copy_verified(directory, record.files, Path(dest).expanduser(), record.ref)
        return record

    def load(
        self,
        ref: ModelRef | str,
        options: LoadOptions | None = None,
        *,
        verify: VerifyPolicy | None = None,
    ) -> CheckedModel:
        """Load a version for inference through its format's runtime.

        Files are checked against the manifest first, per ``verify`` (default: settings).
        Unless ``options`` name a ``derived_dir``, the runtime may keep files it derives from
        the version (an optimized graph) in the store, next to its checkout; whenever the
        version's files are re-hashed, derived files found there are too (and built again
        if they changed).

        Raises:
            NotFound, VerificationFailed, MissingDependency, InvalidModel.
        """
        record = self.get(ref)
        self.runtimes.get(record.format)  # an unknown format fails before any checkout
        directory = self.checkout.checkout(list(record.files))
        policy = verify or self.settings.verify
        key = manifest_key(record.files)
        verifying = policy == "always" or (policy == "first-load" and key not in self._verified)
        if verifying:
            _verify_checkout(directory, record)
            self._verified.add(key)
        given = options or LoadOptions()
        recorded = dataclasses.replace(
            given,
            metadata={**record.metadata, **given.metadata},
            trust_pickle=record.trust_pickle,
            derived_dir=given.derived_dir or self.checkout.derived(list(record.files)),
            # What is served may be a copy derived from the files just verified (an
            # optimized graph): it is held to the same policy.
            verify_derived=given.verify_derived or verifying,
        )
        return self.runtimes.load(record.format, directory / record.entry, recorded)


def _verify_checkout(directory: Path, record: ModelVersion) -> None:
    for entry in record.files:
        path = directory / entry.path
        digest, size = hash_file(path) if path.exists() else ("", -1)
        if digest != entry.digest or size != entry.size:
            raise VerificationFailed(
                f"{record.ref}: file {entry.path!r} does not match its manifest digest; "
                "the stored model was modified or damaged. Run `modelport verify "
                f"{record.ref}` and push the model again"
            )
