"""Shared weights for ONNX models: a derived copy whose weights onnxruntime memory-maps.

A session on the original model holds its weights in private memory, once per process.
Here the graph is optimized once, saved with its large initializers in ``weights.bin``,
and then loaded with optimization off: onnxruntime maps ``weights.bin`` instead of copying
it, so the server's worker processes share one copy of the weights in the page cache
(a 45 MB CNN: 180 + 181 MB PSS for two workers before, 73 + 106 MB after; same speed).
Weights that kernels re-lay out (pre-packed MatMul and Conv weights) are saved in that
layout as well, so no session re-packs them into private memory.

Layout inside a version's cache directory::

    onnx-<variant>/model.onnx     the graph, optimized for this onnxruntime and CPU
    onnx-<variant>/weights.bin    its initializers of 1 KiB or more (absent if none are)
    onnx-<variant>/manifest.json  the sizes and sha256 of the two (see ``derived``): sizes
                                  checked before every use, digests when asked to verify
    onnx-<variant>.lock           held by the one process building the variant
    .tmp-<uuid>/                  a build in progress, renamed into place once complete

Everything here may be deleted at any time; it is built again on the next load. A copy
that fails its check is built again too, with a warning when its bytes were changed after
it was built: what is served is then always what the verified original makes.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import hashlib
import logging
import platform
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from modelport.runtimes import derived

__all__ = ["open_shared", "shared_session", "variant_key"]

log = logging.getLogger(__name__)

_MODEL = "model.onnx"
_WEIGHTS = "weights.bin"
_PROVIDERS = ["CPUExecutionProvider"]
# Smaller tensors stay inside model.onnx: a mapping shares whole pages, so they gain nothing.
_MIN_EXTERNAL_BYTES = 1024
# Changes whenever what a derived copy holds changes, so that older copies are not reused.
_LAYOUT = "prepacked-1"
# A build is seconds to minutes; a .tmp directory this old was left by a killed process.
_STALE_BUILD_SECONDS = 3600.0
# onnxruntime nests statuses, each with a source location: the last one says what happened.
# (``onnx.inspect.short_message`` keeps the first line whole and cuts it at 300
# characters, which for a failed save leaves only locations.)
_ORT_STATUS = re.compile(r"\[ONNXRuntimeError\] : \d+ : \w+ : (?:\S+\.cc:\d+ \S+ )?")


def shared_session(
    ort: Any,
    entry: Path,
    derived_dir: Path,
    level: str,
    *,
    make_options: Callable[[], Any],
    open_original: Callable[[], Any],
    verify: bool = False,
) -> Any:
    """A session on ``entry`` whose weights onnxruntime maps from a derived file in
    ``derived_dir``, built on first use and reused by every later load on this machine.

    Args:
        ort: the onnxruntime module.
        entry: the original model file, already checked by the caller.
        derived_dir: where derived files may be kept (created if missing).
        level: the ``GraphOptimizationLevel`` name the user chose (not ``ORT_DISABLE_ALL``):
            the derived graph is optimized at this level once, then loaded as it is.
        make_options: fresh ``SessionOptions`` as the user asked for them.
        open_original: the ordinary load of ``entry``.
        verify: re-hash a copy found in the cache against the digests recorded when it was
            built (the caller just verified ``entry``); a copy that differs is built again.

    The cache never makes a load fail: when the derived copy cannot be built or used (a
    full disk, a read-only store, a graph onnxruntime cannot save), this logs one warning
    and returns ``open_original()``, whose own errors (the model refused) propagate.
    """
    variant = derived_dir / f"onnx-{variant_key(ort.__version__, level, entry.name)}"
    try:
        return _derived_session(ort, entry, variant, make_options, verify)
    except Exception as exc:  # whatever went wrong, the original can still be served
        problem = _reason(exc)
    session = open_original()
    log.warning(
        "%s: cannot share its weights through %s (%s); loaded them into private memory",
        entry.name,
        variant,
        problem,
    )
    return session


def open_shared(
    ort: Any, entry: Path, derived_dir: Path, level: str, make_options: Callable[[], Any]
) -> Any | None:
    """Another session on the derived copy ``shared_session`` already built for ``entry``
    (its size checked, never re-hashed), or None when there is none to share: a second
    session is only worth its cost when it maps the same weights as the first.
    """
    variant = derived_dir / f"onnx-{variant_key(ort.__version__, level, entry.name)}"
    if not derived.check(variant, digests=False, required=(_MODEL,)).intact:
        return None
    try:
        return _open_derived(ort, variant, make_options)
    except Exception as exc:  # an extra, never a reason for the load to fail
        log.warning("%s: no second session on %s (%s)", entry.name, variant, _reason(exc))
        return None


def variant_key(ort_version: str, level: str, entry_name: str) -> str:
    """Names the derived copy: it is only valid for the onnxruntime, optimization level
    and kind of CPU that made it (optimized graphs may use this CPU's vector width)."""
    identity = "\n".join((ort_version, level, _cpu_identity(), entry_name, _LAYOUT))
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


@functools.cache
def _cpu_identity() -> str:
    flags = ""
    with contextlib.suppress(OSError), Path("/proc/cpuinfo").open() as cpuinfo:
        for line in cpuinfo:
            if line.startswith(("flags", "Features")):  # x86 and ARM spell it differently
                flags = line.partition(":")[2].strip()
                break
    return f"{platform.machine()} {flags}"


def _derived_session(
    ort: Any, entry: Path, variant: Path, make_options: Callable[[], Any], verify: bool
) -> Any:
    seen = _identity(variant)
    if seen is not None:
        found = derived.check(variant, digests=verify, required=(_MODEL,))
        if found.intact:
            with contextlib.suppress(Exception):  # onnxruntime refuses a damaged copy: rebuilt
                return _open_derived(ort, variant, make_options)
        elif found.modified:
            log.warning(
                "%s: the optimized copy in %s was changed after it was built (%s); building "
                "it again from the verified model",
                entry.name,
                variant,
                "; ".join(found.problems),
            )
    _rebuild(ort, entry, variant, make_options, replacing=seen)
    return _open_derived(ort, variant, make_options)


def _open_derived(ort: Any, variant: Path, make_options: Callable[[], Any]) -> Any:
    options = make_options()
    # Optimized once already; optimizing again would copy the weights out of the mapping.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(variant / _MODEL), sess_options=options, providers=_PROVIDERS)


def _rebuild(
    ort: Any,
    entry: Path,
    variant: Path,
    make_options: Callable[[], Any],
    replacing: tuple[int, int] | None,
) -> None:
    variant.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(variant):
        if _identity(variant) != replacing:
            return  # another process built it while this one waited for the lock
        _remove_stale_builds(variant.parent)
        derived.discard(variant)
        try:
            _build(ort, entry, variant, make_options)
        finally:
            _release_freed_memory()


@contextlib.contextmanager
def _build_lock(variant: Path) -> Iterator[None]:
    # Workers starting together would otherwise each build, each holding a private copy of
    # the weights meanwhile: the very memory this module exists to save.
    with variant.with_name(f"{variant.name}.lock").open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # released when the file closes
        yield


def _build(ort: Any, entry: Path, variant: Path, make_options: Callable[[], Any]) -> None:
    building = variant.parent / f".tmp-{uuid.uuid4().hex}"
    building.mkdir()
    try:
        options = make_options()
        # Saving an NCHWc graph logs a "hardware specific" warning: the variant key covers it.
        options.log_severity_level = 4
        options.optimized_model_filepath = str(building / _MODEL)
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", _WEIGHTS
        )
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes",
            str(_MIN_EXTERNAL_BYTES),
        )
        # Weights onnxruntime re-lays out for its kernels (MatMul, Conv) are saved in that
        # layout too: mapped like the rest instead of re-packed into private memory by every
        # session (MiniLM: a second session cost 43 MiB without this, 3 MiB with it).
        options.add_session_config_entry(
            "session.save_external_prepacked_constant_initializers", "1"
        )
        # Never served: its weights are private. Dropped at once, having written the files.
        ort.InferenceSession(str(entry), sess_options=options, providers=_PROVIDERS)
        if not (building / _MODEL).exists():
            raise OSError(f"onnxruntime did not write the optimized model {_MODEL}")
        derived.write_manifest(
            building, [name for name in (_MODEL, _WEIGHTS) if (building / name).exists()]
        )
        try:
            building.rename(variant)
        except OSError:
            # Another process may have won the race: then use its copy.
            if not derived.check(variant, digests=False, required=(_MODEL,)).intact:
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)


def _release_freed_memory() -> None:
    # The building session's weights went back to glibc's heap, which keeps freed memory:
    # without this the process that built the copy holds a private copy anyway (a 45 MB
    # CNN: 271 MB resident instead of 140). Other C libraries lack the call; nothing to do.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


def _identity(path: Path) -> tuple[int, int] | None:
    # Each build is a new directory, so this tells a rebuilt copy from the one found before.
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def _remove_stale_builds(derived_dir: Path) -> None:
    cutoff = time.time() - _STALE_BUILD_SECONDS
    for child in derived_dir.glob(".tmp-*"):
        with contextlib.suppress(OSError):
            if child.stat().st_mtime < cutoff:
                shutil.rmtree(child, ignore_errors=True)


def _reason(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    lines = str(exc).strip().splitlines()
    text = _ORT_STATUS.split(lines[0])[-1].strip() if lines else ""
    text = text or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
