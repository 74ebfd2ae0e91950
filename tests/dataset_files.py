"""Real dataset files of every supported kind, written by the tests that read them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def write_npz(path: Path, rows: int = 30) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, X=rng.standard_normal((rows, 4)).astype(np.float32), y=np.arange(rows) % 3)
    return path


def write_npy(path: Path, rows: int = 30) -> Path:
    np.save(path, np.arange(rows * 6, dtype=np.int32).reshape(rows, 2, 3))
    return path


def write_csv(path: Path, rows: int = 30) -> Path:
    lines = ["width,height,colour,label"]
    colours = ["red", "green", "blue"]
    lines += [f"{i * 0.5},{i % 7},{colours[i % 3]},{i % 2}" for i in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_parquet(path: Path, rows: int = 30) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "a": pa.array(np.linspace(0, 1, rows)),
            "vec": pa.array([[float(i), float(i + 1)] for i in range(rows)]),
            "name": pa.array([f"n{i % 4}" for i in range(rows)]),
            "label": pa.array(np.arange(rows) % 2),
        }
    )
    pq.write_table(table, path)
    return path


def write_jsonl(path: Path, rows: int = 30) -> Path:
    records = [
        {"text": f"sentence number {i}", "score": i / 10 if i != 3 else None, "label": i % 2}
        for i in range(rows)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def write_images(root: Path, per_class: int = 4, mode: str = "L", size: int = 6) -> Path:
    from PIL import Image

    rng = np.random.default_rng(1)
    shape = (size, size) if mode == "L" else (size, size, 3)
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, shape, dtype=np.uint8)
            Image.fromarray(pixels, mode=mode).save(root / cls / f"{i}.png")
    return root
