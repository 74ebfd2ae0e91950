"""Reading dataset files in chunks: every format becomes a stream of ``{column: array}``
chunks (axis 0 the row), so that a push profiles a file larger than memory.

Formats: ``npz`` (named arrays), ``npy`` (one array, the column ``data``), ``csv``,
``parquet`` and ``jsonl`` (read with pyarrow, streamed), and ``images`` (a folder with one
subfolder per class, read with Pillow). Bad data raises ``InvalidInput`` in one line.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from modelport.errors import InvalidInput, MissingDependency
from modelport.types import DataType

__all__ = [
    "CHUNK_ROWS",
    "FORMATS",
    "IMAGE_SUFFIXES",
    "Chunk",
    "WidenColumn",
    "detect_format",
    "image_files",
    "read_chunks",
]

Chunk = dict[str, np.ndarray]
CHUNK_ROWS = 65536
# pyarrow parses text formats block by block; its memory grows much faster than the block
# (about 400 MB at 8 MiB blocks on a 2-core machine, 120 MB at 1 MiB), and it is no faster
# for larger ones. Measured with bench/dataset_push.py.
BLOCK_BYTES = 1 << 20
FORMATS = ("npz", "npy", "csv", "parquet", "jsonl", "images")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
_SUFFIXES = {
    ".npz": "npz",
    ".npy": "npy",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
_CONVERSION = re.compile(
    r"In CSV column #(\d+): CSV conversion error to (\w+): invalid value '(.*)'"
)


def detect_format(path: Path) -> str:
    """The dataset format of ``path`` by its suffix (a directory is an image folder)."""
    if path.is_dir():
        return "images"
    found = _SUFFIXES.get(path.suffix.lower())
    if found is None:
        raise InvalidInput(
            f"{path.name}: unknown kind of dataset file; push a .npz, .npy, .csv, .parquet or "
            ".jsonl file, or a folder of images with one subfolder per class"
        )
    return found


def read_chunks(
    fmt: str, path: Path, types: Mapping[str, DataType] | None = None
) -> Iterator[Chunk]:
    """Stream ``path`` (of format ``fmt``) as chunks of rows.

    ``types`` (column -> datatype, as recorded at push) fixes the column types of text
    formats, so that a stored dataset reads back exactly as it was profiled.

    Raises:
        InvalidInput: the file cannot be read, or its rows are ragged or mix types.
        MissingDependency: the format needs pyarrow or Pillow.
        WidenColumn: a CSV column's type must be widened; read again with its ``types``.
    """
    readers = {
        "npz": _npz,
        "npy": _npy,
        "csv": _csv,
        "parquet": _parquet,
        "jsonl": _jsonl,
        "images": _images,
    }
    if fmt not in readers:
        raise InvalidInput(f"unknown dataset format {fmt!r}; known: {', '.join(FORMATS)}")
    yield from readers[fmt](path, types or {})


# -- numpy ------------------------------------------------------------------------------


def _npz(path: Path, _types: Mapping[str, DataType]) -> Iterator[Chunk]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError) as exc:
        raise InvalidInput(f"cannot read {path.name} as a .npz archive: {exc}") from exc
    yield from _slices(path.name, arrays)


def _npy(path: Path, _types: Mapping[str, DataType]) -> Iterator[Chunk]:
    try:
        array = np.load(path, allow_pickle=False, mmap_mode="r")
    except (OSError, ValueError, EOFError) as exc:
        raise InvalidInput(f"cannot read {path.name} as a .npy array: {exc}") from exc
    yield from _slices(path.name, {"data": array})


def _slices(source: str, arrays: Mapping[str, np.ndarray]) -> Iterator[Chunk]:
    if not arrays:
        raise InvalidInput(f"{source} holds no arrays")
    lengths = {}
    for name, array in arrays.items():
        if array.ndim == 0:
            raise InvalidInput(f"{source}: array {name!r} is a scalar; each array needs a row axis")
        if array.dtype.kind not in "biufUS":
            raise InvalidInput(
                f"{source}: array {name!r} has dtype {array.dtype}, which is not numbers or text"
            )
        lengths[name] = len(array)
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{n!r} {rows}" for n, rows in lengths.items())
        raise InvalidInput(
            f"{source}: ragged arrays: every array needs the same number of rows ({listed})"
        )
    rows = next(iter(lengths.values()))
    for start in range(0, rows, CHUNK_ROWS):
        yield {name: np.asarray(a[start : start + CHUNK_ROWS]) for name, a in arrays.items()}


# -- pyarrow ----------------------------------------------------------------------------


def _arrow() -> Any:
    try:
        import pyarrow
    except ImportError as exc:
        raise MissingDependency(
            "CSV, Parquet and JSON lines datasets need pyarrow: pip install 'modelport[datasets]'"
        ) from exc
    return pyarrow


def _arrow_types(pa: Any, types: Mapping[str, DataType]) -> dict[str, Any]:
    table = {
        DataType.INT64: pa.int64(),
        DataType.FP64: pa.float64(),
        DataType.BOOL: pa.bool_(),
        DataType.BYTES: pa.string(),
    }
    return {name: table[dt] for name, dt in types.items() if dt in table}


class WidenColumn(Exception):
    """A CSV column needs a wider type than its first block showed (integers, then ``1.5``):
    read the file again from the start with ``types``."""

    def __init__(self, types: dict[str, DataType]) -> None:
        super().__init__(f"read again with {types}")
        self.types = types


def _csv(path: Path, types: Mapping[str, DataType]) -> Iterator[Chunk]:
    pa = _arrow()
    from pyarrow import csv

    rows = 0
    try:
        reader = csv.open_csv(
            path,
            read_options=csv.ReadOptions(block_size=BLOCK_BYTES),
            convert_options=csv.ConvertOptions(column_types=_arrow_types(pa, types)),
        )
        for batch in reader:
            _refuse_numbers_among_text(pa, batch, path.name, rows)
            rows += batch.num_rows
            yield _batch_to_chunk(pa, batch, path.name)
    except pa.ArrowInvalid as exc:
        message = str(exc).splitlines()[0] if str(exc) else "unreadable"
        match = _CONVERSION.search(message)
        if match and match.group(2) == "int64" and _is_float(match.group(3)):
            column = _csv_header(path)[int(match.group(1))]
            raise WidenColumn({**types, column: DataType.FP64}) from exc
        raise InvalidInput(_csv_error(path, message, rows)) from exc
    except OSError as exc:
        raise InvalidInput(f"cannot read {path.name}: {exc}") from exc


_NUMBER = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"


def _refuse_numbers_among_text(pa: Any, batch: Any, source: str, before: int) -> None:
    """A CSV column pyarrow read as text because some of its values are not numbers, while
    others are, mixes types (``1``, ``2``, ``foo``): refuse it rather than store numbers
    as text."""
    import pyarrow.compute as pc

    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        if not pa.types.is_string(column.type):
            continue
        numeric = pc.match_substring_regex(column, _NUMBER)
        count = pc.sum(numeric).as_py() or 0
        if 0 < count < len(column) - column.null_count:
            text_at = pc.index(numeric, False).as_py()
            number_at = pc.index(numeric, True).as_py()
            raise InvalidInput(
                f"{source}: column {name!r} mixes types: numbers (row {before + number_at + 1}: "
                f"{column[number_at].as_py()!r}) and text (row {before + text_at + 1}: "
                f"{column[text_at].as_py()!r}); make the column all numbers or all text"
            )


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _csv_header(path: Path) -> list[str]:
    import csv

    with path.open(newline="", encoding="utf-8", errors="replace") as handle:
        return next(csv.reader(handle), [])


def _csv_error(path: Path, message: str, rows: int) -> str:
    where = f" after row {rows}" if rows else ""
    match = _CONVERSION.search(message)
    if match:
        header = _csv_header(path)
        index = int(match.group(1))
        column = repr(header[index]) if index < len(header) else f"#{index + 1}"
        return (
            f"{path.name}: column {column} mixes types{where}: {match.group(3)!r} is not "
            f"{match.group(2)} like the rows before it; make the column all numbers or all text"
        )
    if "Expected" in message and "columns" in message:
        return f"{path.name}: ragged rows{where}: {message.removeprefix('CSV parse error: ')}"
    return f"cannot read {path.name} as CSV: {message}"


def _parquet(path: Path, _types: Mapping[str, DataType]) -> Iterator[Chunk]:
    pa = _arrow()
    from pyarrow import parquet

    try:
        handle = parquet.ParquetFile(path)
        for batch in handle.iter_batches(batch_size=CHUNK_ROWS):
            yield _batch_to_chunk(pa, batch, path.name)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InvalidInput(f"cannot read {path.name} as Parquet: {exc}") from exc


def _jsonl(path: Path, types: Mapping[str, DataType]) -> Iterator[Chunk]:
    pa = _arrow()
    from pyarrow import json

    schema = pa.schema(list(_arrow_types(pa, types).items())) if types else None
    options = json.ParseOptions(explicit_schema=schema) if schema is not None else None
    try:
        reader = json.open_json(
            path, read_options=json.ReadOptions(block_size=BLOCK_BYTES), parse_options=options
        )
        for batch in reader:
            yield _batch_to_chunk(pa, batch, path.name)
    except pa.ArrowInvalid as exc:
        first = str(exc).splitlines()[0]
        if "changed from" in first:
            raise InvalidInput(
                f"{path.name}: a column mixes types: {first.removeprefix('JSON parse error: ')}"
            ) from exc
        raise InvalidInput(f"cannot read {path.name} as JSON lines: {first}") from exc
    except OSError as exc:
        raise InvalidInput(f"cannot read {path.name}: {exc}") from exc


def _batch_to_chunk(pa: Any, batch: Any, source: str) -> Chunk:
    import pyarrow.compute as pc

    chunk = {}
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        kind = column.type
        if (
            pa.types.is_list(kind)
            or pa.types.is_large_list(kind)
            or pa.types.is_fixed_size_list(kind)
        ):
            chunk[name] = _list_column(pc, name, column, source)
        elif pa.types.is_timestamp(kind) or pa.types.is_date(kind) or pa.types.is_time(kind):
            chunk[name] = column.cast(pa.string()).to_numpy(zero_copy_only=False)
        elif pa.types.is_struct(kind) or pa.types.is_map(kind):
            raise InvalidInput(
                f"{source}: column {name!r} holds objects; a dataset column holds numbers, "
                "text or lists of numbers: flatten the objects into columns"
            )
        elif pa.types.is_dictionary(kind):
            chunk[name] = column.cast(kind.value_type).to_numpy(zero_copy_only=False)
        else:
            chunk[name] = column.to_numpy(zero_copy_only=False)
    return chunk


def _list_column(pc: Any, name: str, column: Any, source: str) -> np.ndarray:
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    if len(lengths) and (np.any(lengths != lengths[0]) or column.null_count):
        raise InvalidInput(
            f"{source}: ragged rows: column {name!r} holds lists of different lengths "
            f"({int(np.min(lengths))} to {int(np.max(lengths))} values); every row needs the same"
        )
    width = int(lengths[0]) if len(lengths) else 0
    values = column.flatten().to_numpy(zero_copy_only=False)
    return np.asarray(values).reshape(len(column), width)


# -- images -----------------------------------------------------------------------------


def image_files(root: Path) -> list[tuple[str, Path]]:
    """``(class, file)`` for every image under ``root``'s class subfolders, sorted."""
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    if not classes:
        raise InvalidInput(
            f"{root}: an image dataset is a folder with one subfolder per class; found none"
        )
    return [
        (folder.name, image)
        for folder in classes
        for image in sorted(folder.iterdir())
        if image.is_file() and image.suffix.lower() in IMAGE_SUFFIXES
    ]


def _images(root: Path, _types: Mapping[str, DataType]) -> Iterator[Chunk]:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as exc:
        raise MissingDependency(
            "image folder datasets need Pillow: pip install 'modelport[datasets]'"
        ) from exc
    files = image_files(root)
    classes = sorted({cls for cls, _ in files})
    first: tuple[str, tuple[int, ...]] | None = None
    differing: list[str] = []
    for start in range(0, len(files), 256):
        images, labels = [], []
        for cls, path in files[start : start + 256]:
            try:
                with Image.open(path) as opened:
                    image = opened if opened.mode in ("L", "RGB") else opened.convert("RGB")
                    pixels = np.asarray(image, dtype=np.uint8)
            except (OSError, UnidentifiedImageError) as exc:
                raise InvalidInput(f"cannot read image {cls}/{path.name}: {exc}") from exc
            name = f"{cls}/{path.name}"
            if first is None:
                first = (name, pixels.shape)
            elif pixels.shape != first[1]:
                differing.append(f"{name} ({_shape_text(pixels.shape)})")
                continue
            images.append(pixels)
            labels.append(classes.index(cls))
        if differing:
            break
        if images:
            yield {"image": np.stack(images), "label": np.asarray(labels, dtype=np.int64)}
    if differing and first is not None:
        shown = ", ".join(differing[:5]) + (" …" if len(differing) > 5 else "")
        raise InvalidInput(
            f"{root.name}: every image must have the size and colour mode of {first[0]} "
            f"({_shape_text(first[1])}); these differ: {shown}"
        )


def _shape_text(shape: tuple[int, ...]) -> str:
    mode = "grayscale" if len(shape) == 2 else f"{shape[2]} channels"
    return f"{shape[1]}x{shape[0]} {mode}"
