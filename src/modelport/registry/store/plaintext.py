"""Where decrypted files live while encryption at rest is on.

Runtimes load files from a directory, so a version is decrypted into a checkout; an
optimized graph derived from it holds the same weights. With encryption on, neither may
land in ``MODELPORT_HOME`` or any other disk directory the user did not name:

- by default each process decrypts into its own private directory in memory-backed storage,
  ``/dev/shm/modelport-<uid>/<pid>/`` (else ``$XDG_RUNTIME_DIR/modelport/<pid>/``), mode
  0700, removed when the process exits; directories of processes that died without
  cleaning up are removed by the next process that starts one;
- ``MODELPORT_PLAINTEXT_CACHE=/a/dir`` names a disk directory the user allows instead: a
  checkout cache shared by processes and kept between runs (``modelport gc`` trims it).

Jobs (convert, optimize) keep their scratch directories under the same root.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import shutil
import stat
from pathlib import Path

from modelport.config import Settings
from modelport.errors import StorageError

__all__ = ["encryption_on", "plaintext_base", "process_directory"]

_made: dict[Path, Path] = {}


def encryption_on(settings: Settings) -> bool:
    """Whether ``settings`` configure a master key (encryption at rest)."""
    return settings.encryption_key is not None or settings.encryption_key_file is not None


def plaintext_base(settings: Settings) -> Path:
    """The root of decrypted files: ``MODELPORT_PLAINTEXT_CACHE``, else the user's private
    memory-backed directory (made 0700, and refused when someone else owns it).

    Raises:
        StorageError: no memory-backed directory exists here and none was named.
    """
    if settings.plaintext_cache is not None:
        allowed = settings.plaintext_cache.expanduser()
        allowed.mkdir(parents=True, exist_ok=True)
        return allowed
    shm = Path("/dev/shm")  # noqa: S108  (owner and mode are checked in _private)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if shm.is_dir() and os.access(shm, os.W_OK):
        base = shm / f"modelport-{os.getuid()}"
    elif runtime:
        base = Path(runtime) / "modelport"
    else:
        raise StorageError(
            "encryption at rest is on, and this machine has no memory-backed directory "
            "(/dev/shm or $XDG_RUNTIME_DIR) to decrypt models into; set "
            "MODELPORT_PLAINTEXT_CACHE to a directory where decrypted files may be kept"
        )
    return _private(base)


def process_directory(settings: Settings, store_url: str, key_id: str) -> Path:
    """A checkout cache root for this process, store and master key, removed when the
    process exits (``MODELPORT_PLAINTEXT_CACHE`` instead: a root per store shared by every
    process, and kept: whoever may read that directory may read the models).

    The key id is part of the name so that, in one process, a registry opened with another
    key decrypts for itself (and fails) instead of reusing what the right key decrypted."""
    base = plaintext_base(settings)
    if settings.plaintext_cache is not None:
        return base / hashlib.sha256(store_url.encode()).hexdigest()[:16]
    name = hashlib.sha256(f"{store_url}\0{key_id}".encode()).hexdigest()[:16]
    mine = base / str(os.getpid())
    _sweep(base)  # a listing and a signal-0 per entry: cheap, once per Registry
    if base not in _made:
        _private(mine)
        atexit.register(shutil.rmtree, mine, True)
        _made[base] = mine
    return mine / name


def _private(directory: Path) -> Path:
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = directory.lstat()
    except OSError as exc:
        raise StorageError(
            f"cannot make the private directory {directory} for decrypted models: "
            f"{exc.strerror}; set MODELPORT_PLAINTEXT_CACHE to a directory of your own"
        ) from exc
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise StorageError(
            f"{directory} is not a directory of yours; decrypted models will not be put "
            "there. Remove it, or set MODELPORT_PLAINTEXT_CACHE"
        )
    if stat.S_IMODE(info.st_mode) != 0o700:
        directory.chmod(0o700)
    return directory


def _sweep(base: Path) -> None:
    """Remove the directories of processes that are gone (killed, so no atexit ran)."""
    for child in base.iterdir():
        if child.name.isdigit() and not _alive(int(child.name)):
            shutil.rmtree(child, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process holds the number now
        return True
    with contextlib.suppress(OSError):
        # A zombie holds its pid but will never clean up.
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    return True
