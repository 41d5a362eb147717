"""The manifest: the store's `.h5` file in format 2, replaced atomically by every commit.

It records the segments (names, rows, ids, bytes), the tombstones, the skipped files and subsets,
links the current text file, and presents the images to plain h5py as one virtual dataset per column
over the segments (see docs/store.md for the layout and the reading recipe).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from h5py import h5d, h5p, h5s, h5t

from ..errors import StoreError
from .format import READ_ERRORS, damaged, write_root_attrs
from .h5write import put, put_attr, put_strings
from .segments import COLUMNS, LAYOUT, Segment, map_segment
from .snapshot import SkippedFile, Snapshot
from .texts import Texts, read_strings, read_texts

__all__ = ["SEGMENT_NAME", "TEXTS_NAME", "read_manifest", "segments_folder", "write_manifest"]

SEGMENT_NAME = re.compile(r"seg-[0-9a-f]{16}-[0-9a-f]{8}\.h5")
TEXTS_NAME = re.compile(r"texts-[0-9a-f]{8}\.h5")
_VIRTUAL = {"embeddings": None, "id": np.int64, **COLUMNS, "path_length": np.int32, "path_bytes": np.uint8}


def segments_folder(path: Path) -> Path:
    """The folder of a store's segment and text files: `<store file name>.d` beside it."""
    return path.with_name(path.name + ".d")


def write_manifest(path: Path, store_path: Path, attrs: Mapping[str, Any], snap: Snapshot) -> None:
    """Write the manifest of `snap` to `path` (a temp file that becomes `store_path`)."""
    folder = segments_folder(store_path).name
    dim, dtype = int(attrs["model_meta"]["embed_dim"]), attrs["dtype"]
    with h5py.File(path, "w") as f:
        write_root_attrs(f, store_path, attrs, created=snap.created, updated=snap.updated)
        put_attr(f, "segments_folder", folder)
        put_attr(f, "next_id", snap.next_id)
        put_attr(f, "merge_credit", int(snap.merge_credit))
        table = f.create_group("segments")
        segs = snap.segments
        put_strings(table, "name", [s.name or "" for s in segs])
        for key, values in (("rows", [len(s) for s in segs]), ("first_id", [int(s.ids[0]) for s in segs]),
                            ("last_id", [int(s.ids[-1]) for s in segs]),
                            ("bytes", [s.file_bytes for s in segs]),
                            ("path_bytes", [len(s.path_bytes) for s in segs])):
            put(table, key, np.array(values, np.int64)).close()
        put(table, "offsets", np.array([s.offsets for s in segs], np.int64).reshape(-1, len(LAYOUT))).close()
        images = f.create_group("images")
        put(images, "deleted", np.asarray(snap.dead, np.int64)).close()
        for column, column_dtype in _VIRTUAL.items():
            dt = np.dtype(dtype if column_dtype is None else column_dtype)
            tail = (dim,) if column == "embeddings" else ()
            sources = [(f"{folder}/{s.name}", len(s.path_bytes) if column == "path_bytes" else len(s))
                       for s in segs]
            _virtual_dataset(images, column, dt, tail, sources)
        if snap.texts.name is not None:
            f["texts"] = h5py.ExternalLink(f"{folder}/{snap.texts.name}", "/texts")
        skipped = f.create_group("skipped")
        records = list(snap.skipped.values())
        put_strings(skipped, "path", [r.path for r in records])
        put_strings(skipped, "reason", [r.reason for r in records])
        put(skipped, "size", np.array([r.size for r in records], np.int64)).close()
        put(skipped, "mtime_ns", np.array([r.mtime_ns for r in records], np.int64)).close()
        subsets = f.create_group("subsets")
        for name, paths in snap.subsets.items():
            put_strings(subsets, name, list(paths))


def _virtual_dataset(group: h5py.Group, column: str, dtype: np.dtype, tail: tuple[int, ...],
                     sources: list[tuple[str, int]]) -> None:
    """`group/column`: the `images/<column>` datasets of the segment files one after another, as a
    virtual dataset (h5py's low-level API: twice as fast as VirtualLayout); an empty plain dataset
    when there are no segments."""
    total = sum(rows for _, rows in sources)
    if not sources:
        put(group, column, np.zeros((0, *tail), dtype)).close()
        return
    space = h5s.create_simple((total, *tail))
    dcpl = h5p.create(h5p.DATASET_CREATE)
    start = 0
    for file_name, rows in sources:
        space.select_hyperslab((start, *[0] * len(tail)), (rows, *tail))
        dcpl.set_virtual(space, file_name.encode(), f"images/{column}".encode(),
                         h5s.create_simple((rows, *tail)))
        start += rows
    space.select_all()
    h5d.create(group.id, column.encode(), h5t.py_create(dtype), space, dcpl=dcpl).close()


def read_manifest(path: Path, f: h5py.File, attrs: Mapping[str, Any], *,
                  reuse: Mapping[str, Any] | None = None,
                  dropped: list[str] | None = None) -> Snapshot:
    """The snapshot a format-2 manifest describes, its segments mapped.

    `reuse` maps file names to segments (and the text file) already mapped by an earlier snapshot:
    they are not opened again. With a `dropped` list, segments that are missing or damaged are left
    out and their names appended (the explicit recovery); otherwise they raise StoreError.
    """
    reuse = reuse or {}
    folder = segments_folder(path)
    dim, dtype = int(attrs["model_meta"]["embed_dim"]), attrs["dtype"]
    try:
        table = f["segments"]
        names = read_strings(table["name"])
        rows, first, last, sizes, path_bytes = (np.asarray(table[key][()], np.int64) for key in
                                                ("rows", "first_id", "last_id", "bytes", "path_bytes"))
        offsets = np.asarray(table["offsets"][()], np.int64)
        dead = np.asarray(f["images/deleted"][()], np.int64)
        next_id = int(f.attrs["next_id"])
        credit = int(f.attrs.get("merge_credit", 0))  # absent in stores written before it existed
        link = f.get("texts", getlink=True) if "texts" in f else None
        texts_name = link.filename.rpartition("/")[2] if isinstance(link, h5py.ExternalLink) else None
        skipped_group = f["skipped"]
        records = zip(read_strings(skipped_group["path"]), read_strings(skipped_group["reason"]),
                      skipped_group["size"][()].tolist(), skipped_group["mtime_ns"][()].tolist(), strict=True)
        skipped = {p: SkippedFile(p, r, int(s), int(m)) for p, r, s, m in records}
        subsets = {name: tuple(read_strings(ds)) for name, ds in f["subsets"].items()}
    except READ_ERRORS as error:
        raise StoreError(f"Store {path} is damaged ({type(error).__name__}: {error}). It was left "
                         "untouched; rebuild it with `clipwidgets index` into a new file.") from error
    if not (len(names) == len(rows) == len(first) == len(last) == len(sizes) == len(path_bytes)
            == len(offsets)) or offsets.shape[1:] != (len(LAYOUT),):
        raise damaged(path, "the segment table has columns of different lengths")
    if len(dead) and (np.any(np.diff(dead) <= 0) or dead[0] < 0):
        raise damaged(path, "the tombstones are not sorted ids")
    if len(names) and (np.any(first[1:] <= last[:-1]) or np.any(last < first) or last[-1] >= next_id):
        raise damaged(path, "segment ids overlap or are out of order")
    segments = []
    for k, name in enumerate(names):
        _check_name(path, name, SEGMENT_NAME)
        if isinstance(reuse.get(name), Segment):
            segments.append(reuse[name])
            continue
        try:
            segments.append(map_segment(folder / name, name, rows=int(rows[k]), dim=dim, dtype=dtype,
                                        file_bytes=int(sizes[k]), offsets=offsets[k].tolist(),
                                        path_bytes=int(path_bytes[k]), first_id=int(first[k]),
                                        last_id=int(last[k])))
        except StoreError:
            if dropped is None:
                raise
            dropped.append(name)
    texts = Texts.empty(dim, dtype)
    if texts_name is not None:
        _check_name(path, texts_name, TEXTS_NAME)
        texts = reuse.get(texts_name) or _read_texts(folder, texts_name, dim, dtype, dropped)
    return Snapshot(tuple(segments), dead, next_id, texts, skipped, subsets, attrs["created"],
                    attrs["updated"], merge_credit=max(0, credit))


def _read_texts(folder: Path, name: str, dim: int, dtype: str, dropped: list[str] | None) -> Texts:
    try:
        texts = read_texts(folder / name, name)
        if texts.embeddings.ndim != 2 or texts.embeddings.shape[1] != dim:
            raise ValueError(f"text embeddings of shape {texts.embeddings.shape}, expected (m, {dim})")
        return texts
    except READ_ERRORS as error:
        if dropped is not None:
            dropped.append(name)
            return Texts.empty(dim, dtype)
        raise StoreError(f"Text file {folder / name} is missing or unreadable ({error}). Restore it, or run "
                         f"`clipwidgets compact --store {folder.with_suffix('')} --drop-missing` to drop "
                         "the texts.") from error


def _check_name(path: Path, name: str, pattern: re.Pattern[str]) -> None:
    if not pattern.fullmatch(name):
        raise StoreError(f"Store {path} lists the file {name!r}, which is not a file name of its folder "
                         f"{segments_folder(path).name}/ (a path outside it, or a damaged manifest). It was "
                         "left untouched; rebuild the store with `clipwidgets index` into a new file.")
