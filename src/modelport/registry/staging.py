"""Getting a model's files into a store's staging during a push."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from modelport.errors import InvalidModel
from modelport.registry.store import Blob, BlobWriter
from modelport.registry.store.local import LocalWriter
from modelport.runtimes import ModelInfo, PushOptions, Runtime

__all__ = ["inspect_while_staging", "put_file"]


def put_file(writer: BlobWriter, source: Path, *, take: bool = False) -> Blob:
    """Store one file; refuse it if it changed while it was read. ``take``: the file is
    the registry's to keep, so a local store links it in instead of copying it."""
    if take and isinstance(writer, LocalWriter):
        return writer.adopt(source)
    try:
        before = source.stat()
        handle = source.open("rb")
    except OSError as exc:
        raise InvalidModel(f"cannot read {source}: {exc.strerror}") from exc
    with handle:
        blob = writer.put(handle)
    after = source.stat()
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
        raise InvalidModel(f"{source} changed while it was being pushed; push it again")
    return blob


def inspect_while_staging(
    runtime: Runtime, source: Path, options: PushOptions, writer: BlobWriter, *, take: bool = False
) -> tuple[ModelInfo, Blob | None]:
    """The runtime's description of ``source`` and, for a one-file model on a store that
    stages, the staged blob of ``source``, copied and hashed while the runtime inspected it.

    Inspecting a large model (parsing and checking an ONNX graph) and copying and hashing
    its bytes each take about as long; both release the GIL for most of their work, so on
    two cores a push costs about the longer of the two instead of their sum. A store that
    does not stage (S3 uploads as it goes) is written only once the model is known good.
    What was staged and not used is discarded when ``writing`` ends.
    """
    if not (writer.staged and source.is_file()):
        return runtime.inspect(source, options), None
    with ThreadPoolExecutor(1, thread_name_prefix="modelport-stage") as stager:
        staging = stager.submit(put_file, writer, source, take=take)
        try:
            info = runtime.inspect(source, options)
        except BaseException:
            staging.cancel()
            raise
        return info, staging.result()
