"""``Registry().datasets``: push, split, list, load, verify and delete dataset versions.

A version stores the pushed file(s) as blobs, unchanged, in the registry's blob store; a
split version references its parent's data blobs and adds one index array (``.npy``) per
split. A push copies and hashes the file in one thread while another streams it through
the profiler, so memory stays bounded and a push costs about one read of the file.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import threading
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelport.datasets import tables
from modelport.datasets.profile import Profiler
from modelport.datasets.readers import WidenColumn, detect_format, image_files, read_chunks
from modelport.datasets.records import DatasetRef, DatasetSummary, DatasetVersion
from modelport.datasets.splitting import check_fractions, draw_splits
from modelport.datasets.view import DatasetView
from modelport.errors import Conflict, InvalidInput, NotFound, Unavailable
from modelport.registry.db import read_transaction, write_transaction
from modelport.registry.sources import refuse_special_files
from modelport.registry.store import BlobWriter, FileEntry, manifest_key, verify_blobs
from modelport.security import audit
from modelport.types import DataType, ModelRef, parse_tags, validate_alias, validate_name

if TYPE_CHECKING:
    from modelport.registry import Registry

__all__ = ["Datasets", "read_view"]


class Datasets:
    """The datasets of one ``Registry`` (``registry.datasets``); safe across processes like
    the registry itself."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    # -- writing -------------------------------------------------------------------------

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
        """Store the file (or image folder) at ``path`` as the next version of ``name``.

        ``label`` names the label column (default: a column ``label``, else ``y``).
        The data is read through once, profiled as it streams, and stored only when it
        reads cleanly: bad data stores nothing.

        Raises:
            InvalidInput: unreadable file, ragged rows, mixed types in a column, no rows,
                or no column ``label``.
            InvalidName, StorageError, MissingDependency (pyarrow or Pillow).
        """
        validate_name(name, "dataset name")
        alias_list = [validate_alias(a) for a in aliases]
        tag_map = _tags(tags)
        data = Path(path).expanduser()
        if not data.exists():
            raise InvalidInput(f"{data}: no such file or directory")
        refuse_special_files(data)
        fmt = detect_format(data)
        files = _stored_files(fmt, data)
        with self.registry.store.writing() as writer:
            profiler, entries = _profile_while_staging(fmt, data, files, writer)
            if profiler.rows == 0:
                raise InvalidInput(f"{data.name} holds no rows: there is nothing to store")
            columns = profiler.columns()
            names = [c.name for c in columns]
            chosen = _label(label, names, data.name)
            writer.publish({e.digest for e in entries})
            row = {
                "format": fmt,
                "digest": manifest_key(entries),
                "rows": profiler.rows,
                "size": sum(e.size for e in entries),
                "label": chosen,
                "columns": [c.to_dict() for c in columns],
                "splits": {},
                "split_method": {},
                "profile": _with_classes(profiler.profile(), fmt, data),
                "source": source or str(data.resolve()),
                "license": license,
                "description": description,
                "operation": None,
                "parameters": {},
            }
            with write_transaction(self.registry.engine) as conn:
                number = tables.insert_version(
                    conn, name=name, row=row, parent=None, entries=entries,
                    tags=tag_map, aliases=alias_list,
                )  # fmt: skip
                detail = {"rows": row["rows"], "size": row["size"], "source": row["source"]}
                audit.record(conn, "dataset.push", f"{name}@{number}", detail=detail)
        return self.get(f"{name}@{number}")

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
        """Store a new version of the same data with named splits (``{"train": 0.8,
        "val": 0.1, "test": 0.1}``), drawn from ``ref``'s rows (or from its split, when
        ``ref`` names one). Deterministic for a ``seed``; ``stratify`` keeps each value
        of that column in the same proportion in every split. The new version records
        ``derived_from`` ``ref`` and operation ``split``.

        Raises:
            InvalidInput: the fractions do not add up to 1, or ``stratify`` is no column.
            NotFound: no such dataset, version or split.
        """
        kept = check_fractions(fractions)
        for split_name in kept:
            validate_name(split_name, "split name")
        target = DatasetRef.coerce(ref)
        parent = self.get(target.ref)
        view = self.load(str(target))
        universe = view.split_rows[target.split] if target.split else np.arange(parent.rows)
        strata = view[stratify] if stratify is not None else None
        if strata is not None and strata.ndim != 1:
            raise InvalidInput(
                f"--stratify needs a column with one value per row; {stratify!r} has more"
            )
        parts = draw_splits(universe, kept, seed=seed, strata=strata)
        data_files = [e for e in parent.files if not e.path.startswith("splits/")]
        target_name = validate_name(name or parent.name, "dataset name")
        alias_list = [validate_alias(a) for a in aliases]
        with self.registry.store.writing() as writer:
            index_files = [
                FileEntry(f"splits/{split_name}.npy", blob.digest, blob.size)
                for split_name, blob in (
                    (split_name, writer.put(io.BytesIO(_npy_bytes(index))))
                    for split_name, index in parts.items()
                )
            ]
            entries = [*data_files, *index_files]
            writer.publish({e.digest for e in entries})
            method: dict[str, Any] = {
                "method": "stratified" if stratify else "random",
                "seed": seed,
                "fractions": kept,
                "stratify": stratify,
                "from": str(target),
            }
            if strata is not None:
                method["strata"] = {
                    split_name: _counts(strata, universe, index)
                    for split_name, index in parts.items()
                }
            row = {
                "format": parent.format,
                "digest": manifest_key(entries),
                "rows": parent.rows,
                "size": sum(e.size for e in entries),
                "label": parent.label,
                "columns": [c.to_dict() for c in parent.columns],
                "splits": {split_name: len(index) for split_name, index in parts.items()},
                "split_method": method,
                "profile": parent.profile,
                "source": parent.source,
                "license": parent.license,
                "description": parent.description,
                "operation": "split",
                "parameters": {"fractions": kept, "seed": seed, "stratify": stratify},
            }
            with write_transaction(self.registry.engine) as conn:
                # The version read above, even if an alias in ``ref`` moved since.
                exact = ModelRef(parent.name, version=parent.version)
                parent_id = tables.resolve(conn, exact)[1]
                number = tables.insert_version(
                    conn, name=target_name, row=row, parent=parent_id, entries=entries,
                    tags={}, aliases=alias_list,
                )  # fmt: skip
                detail = {"from": str(exact), "fractions": kept, "seed": seed}
                audit.record(conn, "dataset.split", f"{target_name}@{number}", detail=detail)
        return self.get(f"{target_name}@{number}")

    def builtin(self, which: str, *, name: str | None = None) -> DatasetVersion:
        """Push one of scikit-learn's bundled datasets (iris, digits, wine, breast_cancer,
        diabetes, linnerud) as a version of ``name`` (default: the set's name), with its
        label column ``label``. Reads only files installed with scikit-learn.

        Raises:
            InvalidInput: an unknown set. MissingDependency: no scikit-learn.
        """
        import tempfile

        from modelport.datasets.builtin import write_builtin

        with tempfile.TemporaryDirectory(prefix="modelport-builtin-") as scratch:
            made = write_builtin(which, Path(scratch))
            return self.push(
                made.path,
                name or which,
                label="label",
                description=made.description,
                license=made.license,
                source=f"builtin:scikit-learn/{which}",
            )

    def set_alias(self, ref: DatasetRef | str, alias: str) -> DatasetVersion:
        """Point ``alias`` of the referenced dataset at the referenced version."""
        validate_alias(alias)
        target = DatasetRef.coerce(ref).ref
        with write_transaction(self.registry.engine) as conn:
            did, vid = tables.resolve(conn, target)
            tables.point_alias(conn, did, alias, vid)
            (pointed,) = tables.load_versions(conn, [vid])
            detail = {"alias": alias, "to": pointed.version}
            audit.record(conn, "dataset.alias", f"{target.name}@{alias}", detail=detail)
        return self.get(f"{target.name}@{alias}")

    def delete(self, ref: DatasetRef | str, *, force: bool = False) -> DatasetVersion:
        """Delete one version (its blobs go when nothing else references them). Refuses
        while an alias points at it, unless ``force``. Numbers are never reused."""
        target = DatasetRef.coerce(ref).ref
        if target.version is None and target.alias is None:
            raise InvalidInput(f"say which version to delete, e.g. {target.name}@1")
        with write_transaction(self.registry.engine) as conn:
            _, vid = tables.resolve(conn, target)
            (record,) = tables.load_versions(conn, [vid])
            if record.aliases and not force:
                raise Conflict(
                    f"{record.ref} is what alias {', '.join(record.aliases)} points at; move "
                    "the alias first (modelport dataset alias) or pass --force"
                )
            tables.delete_version(conn, vid)
            detail = {"force": force, "aliases": list(record.aliases)}
            audit.record(conn, "dataset.delete", str(record.ref), detail=detail)
        # Freeing space now is a courtesy: while a push holds the store, `gc` does it later.
        with contextlib.suppress(Unavailable):
            self.registry.gc(wait=2.0)
        return record

    # -- reading -------------------------------------------------------------------------

    def get(self, ref: DatasetRef | ModelRef | str) -> DatasetVersion:
        """The version a reference names (``name`` alone: the latest; a ``:split`` is
        checked to exist)."""
        target = DatasetRef.coerce(ref)
        with read_transaction(self.registry.engine) as conn:
            _, vid = tables.resolve(conn, target.ref)
            record = tables.load_versions(conn, [vid])[0]
        if target.split is not None and target.split not in record.splits:
            known = ", ".join(record.splits) or "none: split it with `modelport dataset split`"
            raise NotFound(
                f"dataset {record.ref} has no split {target.split!r}; its splits: {known}"
            )
        return record

    def list(self) -> builtins.list[DatasetSummary]:
        with read_transaction(self.registry.engine) as conn:
            return tables.list_datasets(conn)

    def versions(self, name: str) -> builtins.list[DatasetVersion]:
        with read_transaction(self.registry.engine) as conn:
            did = tables.dataset_id(conn, validate_name(name, "dataset name"))
            return tables.load_versions(conn, tables.version_ids(conn, did))

    def verify(self, ref: DatasetRef | str) -> builtins.list[str]:
        """Re-hash every file of the version as the store holds it, and its identity;
        one line per problem, empty when intact."""
        record = self.get(DatasetRef.coerce(ref).ref)
        problems = verify_blobs(self.registry.store, record.files)
        if manifest_key(record.files) != record.digest:
            problems.append("the version's file list no longer matches its sha256 identity")
        return problems

    def load(self, ref: DatasetRef | str) -> DatasetView:
        """Read a version (every row) and return the rows ``ref`` names: a split
        (``digits@2:val``) or the whole dataset.

        Raises:
            NotFound: no such dataset, version or split. VerificationFailed: a stored
            file does not match its digest.
        """
        target = DatasetRef.coerce(ref)
        record = self.get(target.ref)
        directory = self.registry.checkout.checkout(list(record.files))
        return read_view(record, directory).select(target.split)


def read_view(record: DatasetVersion, directory: Path) -> DatasetView:
    """Every row of ``record``, read from its files in ``directory`` (a checkout, or a
    verified download: ``Registry.remote(...).datasets.load``)."""
    types = {c.name: c.datatype for c in record.columns}
    chunks: dict[str, list[np.ndarray]] = {c.name: [] for c in record.columns}
    for chunk in read_chunks(record.format, _data_path(record.format, directory), types):
        for column, values in chunk.items():
            chunks[column].append(values)
    whole = {c.name: _typed(np.concatenate(chunks[c.name]), c.datatype) for c in record.columns}
    split_rows = {
        split: np.load(directory / "splits" / f"{split}.npy", allow_pickle=False)
        for split in record.splits
    }
    return DatasetView(record, None, whole, whole, split_rows)


def _profile_while_staging(
    fmt: str, data: Path, files: Sequence[tuple[str, Path]], writer: BlobWriter
) -> tuple[Profiler, list[FileEntry]]:
    """Copy and hash ``files`` into the store in one thread while this one profiles the
    data: each reads the file once (the second read comes from the page cache), and both
    release the GIL for most of their work. A profiling error stops the copy at once."""
    stop = threading.Event()

    def stage() -> list[FileEntry]:
        entries = []
        for rel, path in files:
            with path.open("rb") as handle:
                blob = writer.put(_Stoppable(handle, stop))
            entries.append(FileEntry(rel, blob.digest, blob.size))
        return entries

    with ThreadPoolExecutor(1, thread_name_prefix="modelport-dataset-stage") as stager:
        staging = stager.submit(stage)
        try:
            profiler = _profile(fmt, data)
        except BaseException:
            stop.set()
            raise
        return profiler, staging.result()


def _profile(fmt: str, data: Path) -> Profiler:
    types: dict[str, DataType] = {}
    while True:
        profiler = Profiler(data.name)
        try:
            for chunk in read_chunks(fmt, data, types):
                profiler.add(chunk)
        except WidenColumn as widen:
            types = widen.types  # a CSV int column met a float: read it again as floats
            continue
        return profiler


class _Stoppable:
    def __init__(self, handle: io.BufferedReader, stop: threading.Event) -> None:
        self.handle = handle
        self.stop = stop

    def read(self, size: int = -1, /) -> bytes:
        if self.stop.is_set():
            raise InvalidInput("the push was stopped: the data did not read cleanly")
        return self.handle.read(size)


def _stored_files(fmt: str, data: Path) -> list[tuple[str, Path]]:
    if fmt != "images":
        return [(f"data.{fmt}", data)]
    found = image_files(data)
    if not found:
        raise InvalidInput(f"{data}: the class folders hold no images (.png, .jpg, ...)")
    return [(f"images/{cls}/{path.name}", path) for cls, path in found]


def _with_classes(profile: dict[str, Any], fmt: str, data: Path) -> dict[str, Any]:
    # An image folder's labels are class indices: keep the names they stand for.
    if fmt == "images":
        profile["label"]["classes"] = sorted({cls for cls, _ in image_files(data)})
    return profile


def _data_path(fmt: str, directory: Path) -> Path:
    return directory / ("images" if fmt == "images" else f"data.{fmt}")


def _label(label: str | None, names: list[str], source: str) -> str | None:
    if label is not None:
        if label not in names:
            raise InvalidInput(
                f"{source} has no label column {label!r}; its columns are {', '.join(names)}"
            )
        return label
    return next((n for n in ("label", "y") if n in names), None)


def _typed(values: np.ndarray, datatype: DataType) -> np.ndarray:
    if datatype is DataType.BYTES:
        return values.astype(object)
    return values.astype(datatype.numpy, copy=False)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _counts(strata: np.ndarray, universe: np.ndarray, index: np.ndarray) -> dict[str, int]:
    # ``strata`` is aligned with ``universe``, which is sorted; ``index`` is a subset of it.
    values, counts = np.unique(strata[np.searchsorted(universe, index)], return_counts=True)
    return {str(v): int(c) for v, c in zip(values.tolist(), counts.tolist(), strict=True)}


def _tags(tags: Mapping[str, str] | Iterable[str] | None) -> dict[str, str]:
    if tags is None:
        return {}
    if isinstance(tags, Mapping):
        return parse_tags(f"{k}={v}" for k, v in tags.items())
    return parse_tags(tags)
