"""What may be pushed: regular files and directories, checked before anything reads them."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from modelport.errors import InvalidModel

__all__ = ["refuse_special_files"]


def refuse_special_files(path: Path) -> None:
    """Refuse ``path`` unless it is a regular file, or a directory holding only regular files
    and directories.

    Reading a named pipe waits for a writer that never comes and a device may never end,
    so a push would hang before any check could answer. Symlinks are judged by what they
    point at (a link to a FIFO is refused); a dangling link or a missing ``path`` passes,
    for the checks after this one to report as they always have.

    Raises:
        InvalidModel: naming the offending file and what it is.
    """
    kind = _special_kind(path)
    if kind is not None:
        raise InvalidModel(
            f"{path} is a {kind}, not a model file or directory; push a regular file or a directory"
        )
    if not path.is_dir():
        return
    # Symlinked directories are not descended: the push does not store them either.
    for directory, subdirectories, filenames in os.walk(path):
        for name in (*subdirectories, *filenames):
            child = Path(directory, name)
            kind = _special_kind(child)
            if kind is not None:
                raise InvalidModel(
                    f"{path}: {child.relative_to(path).as_posix()} is a {kind}; a model "
                    "directory may hold only regular files and directories"
                )


_KINDS = (
    (stat.S_ISFIFO, "named pipe (FIFO)"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISSOCK, "socket"),
)


def _special_kind(path: Path) -> str | None:
    """What ``path`` is when it is neither a regular file nor a directory, else ``None``."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    return next((kind for test, kind in _KINDS if test(mode)), "special file")
