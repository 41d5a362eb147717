"""Segments: immutable HDF5 files of image rows, memory-mapped for reading.

A segment holds a run of images in insertion order: their vectors, stable ids (ascending), file
columns, paths packed as offsets + UTF-8 bytes, and a sorted hash index of the paths. Every dataset
is contiguous and uncompressed, so a reader maps the file once and views each dataset at its offset.
Pending rows of a writer are a `Segment` in memory with the same fields.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import StoreError
from .h5write import put, put_attr

__all__ = ["CHUNK_ROWS", "COLUMNS", "LAYOUT", "SEGMENT_FORMAT", "Segment", "map_segment", "pack_paths",
           "path_hashes", "write_segment"]

SEGMENT_FORMAT = "clipwidgets.segment"
COLUMNS = {"size": np.int64, "mtime_ns": np.int64, "width": np.int32, "height": np.int32}
CHUNK_ROWS = 65536  # rows copied per step when a merge streams segments into a new one


@dataclass(frozen=True)
class Segment:
    """Image rows of one segment file (`name`), or pending rows in memory (`name` None)."""

    name: str | None
    ids: np.ndarray  # (n,) int64, ascending, never reused
    vectors: np.ndarray  # (n, dim) float16/float32, read-only when mapped
    columns: dict[str, np.ndarray]  # COLUMNS, (n,) each
    path_offsets: np.ndarray  # (n + 1,) int64 into path_bytes
    path_bytes: np.ndarray  # (B,) uint8, UTF-8
    hash_sorted: np.ndarray  # (n,) uint64, the path hashes sorted
    hash_order: np.ndarray  # (n,) int64, local row of each sorted hash
    file_bytes: int = 0
    offsets: tuple[int, ...] = ()  # file offset of each dataset of LAYOUT (-1: empty)

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def in_memory(cls, ids: np.ndarray, paths: Sequence[str], vectors: np.ndarray,
                  columns: dict[str, np.ndarray], hashes: np.ndarray | None = None) -> Segment:
        offsets, raw = pack_paths(paths)
        hashes = path_hashes(paths) if hashes is None else hashes
        order = np.argsort(hashes, kind="stable")
        return cls(None, np.asarray(ids, np.int64), vectors,
                   {name: np.asarray(columns[name], dtype) for name, dtype in COLUMNS.items()},
                   offsets, raw, hashes[order], order.astype(np.int64))

    def paths(self, start: int = 0, stop: int | None = None) -> list[str]:
        """Decoded paths of local rows start..stop."""
        stop = len(self) if stop is None else stop
        if stop <= start:
            return []
        offsets = self.path_offsets[start:stop + 1].tolist()
        raw = self.path_bytes[offsets[0]:offsets[-1]].tobytes()
        base = offsets[0]
        return [raw[a - base:b - base].decode("utf-8")
                for a, b in zip(offsets[:-1], offsets[1:], strict=True)]

    def path(self, local: int) -> str:
        start, stop = int(self.path_offsets[local]), int(self.path_offsets[local + 1])
        return self.path_bytes[start:stop].tobytes().decode("utf-8")

    def row_hashes(self) -> np.ndarray:
        """The path hash of every local row, in row order."""
        out = np.empty(len(self), np.uint64)
        out[self.hash_order] = self.hash_sorted
        return out

    def find(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(query number, local row) of every row whose path hash equals a queried one."""
        low = np.searchsorted(self.hash_sorted, hashes, "left")
        high = np.searchsorted(self.hash_sorted, hashes, "right")
        counts = high - low
        queries = np.repeat(np.arange(len(hashes)), counts)
        if not len(queries):
            return queries, queries
        steps = np.arange(len(queries)) - np.repeat(np.cumsum(counts) - counts, counts)
        return queries, np.asarray(self.hash_order[np.repeat(low, counts) + steps], np.int64)


def path_hashes(paths: Sequence[str]) -> np.ndarray:
    """A stable 64-bit hash of each path (BLAKE2b), the key of the segments' path index."""
    return np.fromiter((int.from_bytes(hashlib.blake2b(p.encode("utf-8"), digest_size=8).digest(), "little")
                        for p in paths), np.uint64, len(paths))


def pack_paths(paths: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(offsets (n+1,) int64, bytes (B,) uint8) of the UTF-8 paths joined."""
    encoded = [path.encode("utf-8") for path in paths]
    offsets = np.zeros(len(encoded) + 1, np.int64)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    return offsets, np.frombuffer(b"".join(encoded), np.uint8).copy()


def _gather_bytes(segment: Segment, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lengths, bytes) of the paths of `rows` (ascending local rows) of `segment`."""
    starts = np.asarray(segment.path_offsets[rows], np.int64)
    lengths = np.asarray(segment.path_offsets[rows + 1], np.int64) - starts
    if not len(rows):
        return lengths, np.zeros(0, np.uint8)
    first, last = int(starts[0]), int(starts[-1] + lengths[-1])
    window = np.asarray(segment.path_bytes[first:last])
    outs = np.cumsum(lengths) - lengths
    index = np.arange(int(lengths.sum())) - np.repeat(outs - (starts - first), lengths)
    return lengths, window[index]


def _all_finite(block: np.ndarray) -> bool:
    if block.dtype == np.float16:  # exponent bits all ones: inf or NaN (a bit test, 10x np.isfinite)
        return not bool(np.any((block.view(np.uint16) & 0x7C00) == 0x7C00))
    return bool(np.isfinite(block).all())


def _blocks(parts: Sequence[tuple[Segment, np.ndarray]], dtype: str) -> Iterator[tuple[Any, ...]]:
    """(vectors, ids, columns, path lengths, path bytes) of up to CHUNK_ROWS selected rows at a time."""
    for segment, rows in parts:
        for start in range(0, len(rows), CHUNK_ROWS):
            chosen = rows[start:start + CHUNK_ROWS]
            block = np.asarray(segment.vectors[chosen], dtype=dtype)
            if not _all_finite(block):
                raise StoreError(f"Segment {segment.name or '(pending rows)'} holds NaN or inf vectors "
                                 "(a damaged or crafted file); it was left untouched.")
            lengths, data = _gather_bytes(segment, chosen)
            yield (block, np.asarray(segment.ids[chosen]),
                   {name: np.asarray(segment.columns[name][chosen]) for name in COLUMNS}, lengths, data)


def write_segment(path: Path, parts: Sequence[tuple[Segment, np.ndarray]], *, dim: int,
                  dtype: str) -> tuple[int, list[int], int]:
    """Write the rows `parts` select ((segment, ascending local rows) each) as a new segment file.

    Up to CHUNK_ROWS rows are written in one call per dataset; more are streamed CHUNK_ROWS at a time,
    so memory stays small. Refuses non-finite vectors (a crafted segment), naming the segment.
    Returns (rows, file offset of each LAYOUT dataset (-1: empty), bytes of packed paths).
    """
    total = sum(len(rows) for _, rows in parts)
    path_total = sum(int((seg.path_offsets[rows + 1] - seg.path_offsets[rows]).sum()) for seg, rows in parts)
    hashes = (np.concatenate([seg.row_hashes()[rows] for seg, rows in parts]) if parts
              else np.zeros(0, np.uint64))
    offsets = np.zeros(total + 1, np.int64)
    order = np.argsort(hashes, kind="stable")
    with h5py.File(path, "w") as f:
        put_attr(f, "format_name", SEGMENT_FORMAT)
        put_attr(f, "rows", total)
        located: dict[str, Any] = {}
        if total <= CHUNK_ROWS:  # one block: each dataset written whole at creation
            blocks = list(_blocks(parts, dtype))
            if blocks:
                np.cumsum(np.concatenate([b[3] for b in blocks]), out=offsets[1:])
            data = {"images/embeddings": np.concatenate([b[0] for b in blocks]) if blocks
                    else np.zeros((0, dim), dtype),
                    "images/id": np.concatenate([b[1] for b in blocks]) if blocks else np.zeros(0, np.int64),
                    **{f"images/{name}": np.concatenate([b[2][name] for b in blocks]) if blocks
                       else np.zeros(0, dt) for name, dt in COLUMNS.items()},
                    "images/path_bytes": np.concatenate([b[4] for b in blocks]) if blocks
                    else np.zeros(0, np.uint8)}
            for key, values in data.items():
                located[key] = put(f, key, values)
        else:
            datasets = {key: f.create_dataset(key, shape, dt) for key, (dt, shape) in
                        _shapes(total, dim, dtype, path_total).items() if key in _STREAMED}
            out = byte_out = 0
            for vectors, ids, columns, lengths, raw in _blocks(parts, dtype):
                stop = out + len(ids)
                datasets["images/embeddings"][out:stop] = vectors
                datasets["images/id"][out:stop] = ids
                for name, values in columns.items():
                    datasets[f"images/{name}"][out:stop] = values
                offsets[out + 1:stop + 1] = byte_out + np.cumsum(lengths)
                if len(raw):
                    datasets["images/path_bytes"][byte_out:byte_out + len(raw)] = raw
                out, byte_out = stop, byte_out + len(raw)
        for key, values in (("images/path_offsets", offsets),
                            ("images/path_length", np.diff(offsets).astype(np.int32)),
                            ("index/hash_sorted", hashes[order]),
                            ("index/hash_order", order.astype(np.int64))):
            located[key] = put(f, key, values)
        found = [(located[key] if key in located else f[key].id).get_offset() for key in LAYOUT]
        for dataset in located.values():
            dataset.close()
    return total, [-1 if offset is None else int(offset) for offset in found], path_total


_STREAMED = ("images/embeddings", "images/id", *(f"images/{name}" for name in COLUMNS), "images/path_bytes")
LAYOUT = ("images/embeddings", "images/id", "images/size", "images/mtime_ns", "images/width", "images/height",
          "images/path_offsets", "images/path_bytes", "index/hash_sorted", "index/hash_order")


def _shapes(rows: int, dim: int, dtype: str, path_bytes: int) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    column = {f"images/{name}": (np.dtype(dt), (rows,)) for name, dt in COLUMNS.items()}
    return {"images/embeddings": (np.dtype(dtype), (rows, dim)), "images/id": (np.dtype(np.int64), (rows,)),
            **column, "images/path_offsets": (np.dtype(np.int64), (rows + 1,)),
            "images/path_bytes": (np.dtype(np.uint8), (path_bytes,)),
            "index/hash_sorted": (np.dtype(np.uint64), (rows,)),
            "index/hash_order": (np.dtype(np.int64), (rows,))}


def _problem(path: Path, text: str) -> StoreError:
    store = path.parent.with_suffix("")
    return StoreError(f"Segment file {path} {text}. Restore it, or run `clipwidgets compact --store {store} "
                      "--drop-missing` to drop its rows.")


def _map_file(path: Path, file_bytes: int) -> tuple[int, np.ndarray]:
    """(size, copy-on-write map) of a segment file, opened once: a writer's merge may delete the file
    at any moment, and then this is a StoreError (read_store reads the newer manifest), never a
    FileNotFoundError between checking the file and mapping it."""
    try:
        file = open(path, "rb")  # noqa: SIM115  (closed below by `with`; the map outlives it)
    except FileNotFoundError:
        raise _problem(path, f"is missing (a store is its file and the folder {path.parent.name}/ beside "
                       "it: copy, move or rename both together)") from None
    with file:
        size = os.fstat(file.fileno()).st_size
        if size != file_bytes:
            raise _problem(path, f"has {size} bytes, but the manifest recorded {file_bytes} (truncated or "
                           "replaced)")
        return size, np.memmap(file, np.uint8, "c") if size else np.zeros(0, np.uint8)


def _segment(path: Path, name: str, views: dict[str, np.ndarray], offsets: tuple[int, ...],
             file_bytes: int) -> Segment:
    return Segment(name, views["images/id"], views["images/embeddings"],
                   {key: views[f"images/{key}"] for key in COLUMNS}, views["images/path_offsets"],
                   views["images/path_bytes"], views["index/hash_sorted"], views["index/hash_order"],
                   file_bytes, offsets)


def map_segment(path: Path, name: str, *, rows: int, dim: int, dtype: str, file_bytes: int,
                offsets: Sequence[int], path_bytes: int, first_id: int | None = None,
                last_id: int | None = None) -> Segment:
    """Map a segment at the dataset offsets the manifest recorded (no HDF5 call: ~0.1 ms a segment).

    StoreError naming the file when it is missing, truncated, or does not hold what the manifest says.
    """
    size, mapped = _map_file(path, file_bytes)
    shapes = _shapes(rows, dim, dtype, path_bytes)
    views = {}
    for key, offset in zip(LAYOUT, offsets, strict=True):
        dt, shape = shapes[key]
        nbytes = int(np.prod(shape)) * dt.itemsize
        if nbytes == 0:
            views[key] = np.zeros(shape, dt)
            continue
        if not 0 <= offset <= size - nbytes:
            raise _problem(path, f"does not hold {key} where the manifest says")
        views[key] = mapped[offset:offset + nbytes].view(dt).reshape(shape)
    segment = _segment(path, name, views, tuple(offsets), file_bytes)
    ends = (int(segment.ids[0]), int(segment.ids[-1])) if rows else None
    if ends is not None and first_id is not None and ends != (first_id, last_id):
        raise _problem(path, "is not the segment the manifest lists (other image ids)")
    return segment
