"""Reading format version 1: one self-contained file, loaded whole into a pending snapshot.

A v1 store opens as it is; its rows become one in-memory segment, so the first commit of a writer
writes them as segments and replaces the file by a format-2 manifest (the atomic upgrade).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import StoreError
from .format import READ_ERRORS, damaged
from .segments import COLUMNS, Segment
from .snapshot import SkippedFile, Snapshot
from .texts import Texts, read_strings

__all__ = ["read_v1"]


def _array(dataset: h5py.Dataset) -> np.ndarray:
    out = np.empty(dataset.shape, dataset.dtype)
    if out.size:
        dataset.read_direct(out)
    return out


def read_v1(path: Path, f: h5py.File, attrs: Mapping[str, Any]) -> Snapshot:
    """The whole v1 file as a snapshot with one in-memory segment (ids = v1 rows)."""
    dim = int(attrs["model_meta"]["embed_dim"])
    try:
        images, texts, skipped = f["images"], f["texts"], f["skipped"]
        paths = read_strings(images["paths"])
        vectors = _array(images["embeddings"])
        columns = {name: np.asarray(images[name][()]).reshape(-1) for name in COLUMNS}
        text = read_strings(texts["text"])
        text_vectors = _array(texts["embeddings"])
        links = np.asarray(texts["image_index"][()], np.int64).reshape(-1)
        sources = read_strings(texts["source"])
        records = zip(read_strings(skipped["path"]), read_strings(skipped["reason"]),
                      skipped["size"][()].tolist(), skipped["mtime_ns"][()].tolist(), strict=True)
        skip = {p: SkippedFile(p, r, int(s), int(m)) for p, r, s, m in records}
        subsets = {name: tuple(read_strings(ds)) for name, ds in f["subsets"].items()}
    except READ_ERRORS as error:
        raise StoreError(f"Store {path} is damaged ({type(error).__name__}: {error}). It was left "
                         "untouched; rebuild it with `clipwidgets index` into a new file.") from error
    count = len(paths)
    problems = []
    if vectors.shape != (count, dim) or vectors.dtype != np.dtype(attrs["dtype"]):
        problems.append(f"images/embeddings has shape {vectors.shape}, expected ({count}, {dim})")
    if any(len(column) != count for column in columns.values()):
        problems.append("image columns of different lengths")
    if text_vectors.shape != (len(text), dim) or not len(links) == len(sources) == len(text):
        problems.append("text columns of different lengths")
    elif len(text) and (links.min() < -1 or links.max() >= count):
        problems.append("texts linked to images that do not exist")
    if problems:
        raise damaged(path, "; ".join(problems))
    for name, block in (("images", vectors), ("texts", text_vectors)):
        bad = np.flatnonzero(~np.isfinite(block.astype(np.float32)).all(axis=1))
        if len(bad):
            raise damaged(path, f"{name}/embeddings row {bad[0]} holds NaN or inf")
    ids = np.arange(count, dtype=np.int64)
    segment = Segment.in_memory(ids, paths, vectors, columns)
    text_block = Texts(None, tuple(text), text_vectors, links, tuple(sources))
    return Snapshot((segment,) if count else (), np.zeros(0, np.int64), count, text_block, skip, subsets,
                    attrs["created"], attrs["updated"])
