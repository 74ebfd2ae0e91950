"""Files a runtime derives from a version and keeps in ``LoadOptions.derived_dir`` (an optimized
graph and its weights): how they are recorded when built and checked before they are used.

Each set of derived files lives in one directory of ``derived_dir``, beside a ``manifest.json``
that records the size and sha256 digest of every file as it was written. A load checks the
sizes every time (a cheap guard against a truncated copy) and the digests when the
registry's verify policy re-hashes the version's own files; ``modelport verify`` checks the
digests of every set a version has, and removes a set that fails (any set may be deleted
at any time: the runtime builds it again from the verified stored files).

The digests catch a copy damaged or modified after it was built. Like the files, they live
in the store, so they assume, as the rest of the store does, that only modelport writes
there.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["MANIFEST", "DerivedCheck", "check", "copies", "discard", "write_manifest"]

MANIFEST = "manifest.json"


@dataclass(frozen=True, slots=True)
class DerivedCheck:
    """What checking one directory of derived files found: ``problems`` is empty when the
    files are as they were built."""

    name: str
    problems: tuple[str, ...] = ()
    modified: bool = False
    """A file has the recorded size but not the recorded digest: it was changed after it
    was built (by hand, by an attacker, by a failing disk), not left half-made."""

    @property
    def intact(self) -> bool:
        return not self.problems


def write_manifest(directory: Path, names: Iterable[str]) -> None:
    """Record the size and sha256 of each of ``names`` (files in ``directory``)."""
    files = {}
    for name in names:
        digest, size = _sha256(directory / name)
        files[name] = {"size": size, "sha256": digest}
    (directory / MANIFEST).write_text(json.dumps({"files": files}))


def check(directory: Path, *, digests: bool, required: Iterable[str] = ()) -> DerivedCheck:
    """Compare the files in ``directory`` with its manifest: sizes always, contents (sha256)
    when ``digests``. ``required`` names files the manifest must list.

    Never raises for a damaged directory: every problem, an unreadable manifest among
    them, is a line of the result.
    """
    name = directory.name
    try:
        files = _read_manifest(directory)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return DerivedCheck(
            name, (f"{MANIFEST}: unreadable or made by an older modelport ({exc})",)
        )
    problems = [f"{MANIFEST}: does not list {need}" for need in required if need not in files]
    modified = False
    for file_name, (size, digest) in sorted(files.items()):
        path = directory / file_name
        try:
            found_size = path.stat().st_size
        except OSError:
            problems.append(f"{file_name}: missing")
            continue
        if found_size != size:
            problems.append(f"{file_name}: {found_size} bytes, but {size} when it was built")
            continue
        if digests:
            found_digest, _ = _sha256(path)
            if found_digest != digest:
                modified = True
                problems.append(
                    f"{file_name}: content changed since it was built (expected sha256 "
                    f"{digest[:12]}…, found {found_digest[:12]}…)"
                )
    return DerivedCheck(name, tuple(problems), modified)


def copies(derived_dir: Path) -> list[Path]:
    """The directories of derived files in ``derived_dir``, builds in progress left out."""
    if not derived_dir.is_dir():
        return []
    return sorted(
        child
        for child in derived_dir.iterdir()
        if not child.name.startswith(".") and (child / MANIFEST).is_file()
    )


def discard(directory: Path) -> None:
    """Delete a directory of derived files so that no process ever opens it half-deleted:
    renamed away first, then removed. Processes that mapped its files keep them."""
    if not directory.exists():
        return
    doomed = directory.parent / f".tmp-{uuid.uuid4().hex}"
    directory.rename(doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def _read_manifest(directory: Path) -> dict[str, tuple[int, str]]:
    raw: Any = json.loads((directory / MANIFEST).read_text())["files"]
    if not isinstance(raw, dict) or not raw:
        raise ValueError("no files listed")
    files = {}
    for name, entry in raw.items():
        # A hand-edited manifest must not make a check read outside its directory.
        if not isinstance(name, str) or name in ("", ".", "..", MANIFEST) or "/" in name:
            raise ValueError(f"{name!r} is not a file of this directory")
        size, digest = entry["size"], entry["sha256"]
        if not isinstance(size, int) or not isinstance(digest, str):
            raise TypeError(f"{name!r}: malformed entry")
        files[name] = (size, digest)
    return files


def _sha256(path: Path) -> tuple[str, int]:
    with path.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
        return digest, handle.tell()
