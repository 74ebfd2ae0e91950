"""Scratch directories for jobs, and the sweep that removes those of dead jobs.

Each job works in ``<home>/jobs/<id>/``, next to ``<home>/jobs/<id>.lock``, which the job
holds locked (``flock``) for as long as it lives. The kernel lets go of the lock when the
process dies however it dies (``kill -9`` included), so a lock that can be taken belongs to
a dead job: ``sweep`` removes its directory, then the lock file. The directory is made only
once the lock is held, and the lock file removed only after its directory, so a sweep never
takes a live job's scratch and never leaves a directory it cannot find again.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from modelport.errors import StorageError

__all__ = ["scratch_directory", "sweep"]

_LOCK = ".lock"


@contextlib.contextmanager
def scratch_directory(root: Path) -> Iterator[Path]:
    """An empty directory under ``root`` for one job, removed when the block ends.

    Raises:
        StorageError: ``root`` cannot be written.
    """
    try:
        root.mkdir(parents=True, exist_ok=True)
        handle, directory = _locked(root)
    except OSError as exc:
        raise StorageError(
            f"cannot make a scratch directory under {root}: {exc.strerror}; check that "
            "MODELPORT_HOME is writable and has space"
        ) from exc
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        with contextlib.suppress(OSError):
            directory.with_name(directory.name + _LOCK).unlink()
        os.close(handle)


def _locked(root: Path) -> tuple[int, Path]:
    while True:
        name = uuid.uuid4().hex
        lock = root / (name + _LOCK)
        handle = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(handle, fcntl.LOCK_EX)
        # A sweep may have taken and removed the lock file between its creation and our
        # flock (it looked dead): then we hold a lock nobody can see, and start again.
        try:
            same = lock.stat().st_ino == os.fstat(handle).st_ino
        except FileNotFoundError:
            same = False
        if same:
            directory = root / name
            directory.mkdir()
            return handle, directory
        os.close(handle)


def sweep(root: Path) -> int:
    """Remove the scratch of every job under ``root`` whose process is gone.

    Safe to run at any time, from any process, while jobs run. Returns how many were removed.
    """
    if not root.is_dir():
        return 0
    removed = 0
    for lock in root.glob("*" + _LOCK):
        try:
            handle = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:  # its job just finished
            continue
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a live job holds it
            os.close(handle)
            continue
        try:
            directory = lock.with_name(lock.name.removesuffix(_LOCK))
            # Not there when its job ended cleanly between our open and our flock.
            removed += directory.exists()
            shutil.rmtree(directory, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
        finally:
            os.close(handle)
    return removed
