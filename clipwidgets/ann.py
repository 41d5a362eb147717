"""Optional approximate index (faiss) for stores beyond a few hundred thousand images.

`build_ann_index(store)` writes `<store>.faiss` and `<store>.faiss.json` beside the store; the JSON
records the store's row count and a fingerprint of its paths and embeddings, so an index built
before the store changed is recognised as stale and ignored. faiss is optional
(`pip install "clipwidgets[ann]"`); without it every search is exact.

Building streams the store's memory-mapped segments (`store.vector_blocks()`) BUILD_ROWS rows at a
time and trains on a sample, so it never holds the collection in memory. Kinds:

- "hnsw": a graph over float32 copies of the vectors (4 KB per 512-d row, plus the graph); best
  below a few hundred thousand rows (its build time grows fastest).
- "ivf": inverted lists of float32 vectors (same memory), probed to 1/8 of the lists.
- "ivfpq": inverted lists of product-quantised codes, 4 bits per 4 dims (faiss fast scan: dim / 8
  bytes per row, 64 B for 512-d, so 10M rows take ~0.7 GB), probing IVFPQ_PROBES lists (more in
  small stores, enough to hold twice the candidates) and returning IVFPQ_CANDIDATES candidates
  that search re-scores exactly from the store (see searching/index.py), which restores the
  ranking the coarse codes blur.

"auto" (the default) picks "hnsw" below AUTO_IVFPQ_ROWS rows and "ivfpq" from there.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ClipWidgetsError, InvalidInputError
from .types import StoreReader

__all__ = [
    "AUTO_IVFPQ_ROWS", "AnnIndex", "BUILD_ROWS", "HNSW_EF_CONSTRUCTION", "HNSW_EF_SEARCH", "HNSW_NEIGHBOURS",
    "IVFPQ_CANDIDATES", "IVFPQ_MAX_LISTS", "IVFPQ_PROBES", "IVF_PROBE_FRACTION", "KINDS", "ann_status",
    "build_ann_index", "index_paths", "live_chunks", "load_ann_index", "store_fingerprint",
]

KINDS = ("hnsw", "ivf", "ivfpq")
AUTO_IVFPQ_ROWS = 200_000
HNSW_NEIGHBOURS = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128
IVF_PROBE_FRACTION = 1 / 8
IVFPQ_MAX_LISTS = 4096  # k-means and adding cost grow with the lists (see docs/store.md, Scale)
IVFPQ_PROBES = 16
IVFPQ_CANDIDATES = 2048
BUILD_ROWS = 65_536  # rows converted to float32 and added at a time (128 MB at 512-d)
_TRAIN_PER_LIST = 40  # faiss wants >= 39 training points per list
_FINGERPRINT_ROWS = 1024  # strided rows (and the last): every edit shifts rows or changes the last one


def index_paths(store: StoreReader) -> tuple[Path, Path]:
    """(index file, metadata file) beside `store`."""
    base = Path(store.path)
    return base.with_name(base.name + ".faiss"), base.with_name(base.name + ".faiss.json")


def store_fingerprint(store: StoreReader) -> str:
    """A digest of the store's row count, dimension, and a strided sample of paths and embeddings
    (read row by row, so a segmented store is sampled, not loaded or decoded whole)."""
    count = store.num_images
    step = max(1, count // _FINGERPRINT_ROWS)
    rows = np.unique(np.append(np.arange(0, count, step, dtype=np.int64), count - 1)) if count else \
        np.zeros(0, np.int64)
    sample = store.image_vectors(rows)
    shape = (count, int(store.model_meta["embed_dim"]))
    digest = hashlib.sha1(f"{count}:{shape}:{sample.dtype}".encode())
    digest.update(np.ascontiguousarray(sample).tobytes())
    digest.update("\n".join(store.image_path(int(row)) for row in rows).encode())
    return digest.hexdigest()


def live_chunks(store: StoreReader, rows: int | None = None) -> Iterator[np.ndarray]:
    """The store's image vectors in row order as float32 arrays of up to `rows` (default BUILD_ROWS)
    rows, read from its (memory-mapped) blocks; deleted rows are left out."""
    rows = rows or BUILD_ROWS
    for block in store.vector_blocks():
        live = np.asarray(block.rows) >= 0
        for start in range(0, len(live), rows):
            keep = live[start:start + rows]
            part = np.asarray(block.vectors[start:start + rows])
            if not keep.all():
                part = part[keep]
            if len(part):
                yield np.ascontiguousarray(part, dtype=np.float32)


def _training_sample(store: StoreReader, size: int) -> np.ndarray:
    rows = np.sort(np.random.default_rng(0).choice(store.num_images, size=size, replace=False))
    return np.ascontiguousarray(store.image_vectors(rows), dtype=np.float32)


def _pq_shape(dim: int) -> int:
    """Sub-quantizers of the 4-bit fast-scan codes: 4 dims each (an even count, as fast scan needs),
    or 0 when `dim` has no such divisor (then 8-bit codes of 8 dims each are used)."""
    return next((m for m in range(dim // 4, 1, -1) if dim % m == 0 and m % 2 == 0), 0)


def _new_index(faiss: Any, store: StoreReader, kind: str, count: int, dim: int) -> Any:
    """An empty, trained faiss index of `kind` for `count` rows."""
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        return index
    if kind == "ivf":
        lists = max(1, min(count // 39, int(4 * math.sqrt(count))))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
        index.train(_training_sample(store, min(count, 256 * lists)))
        return index
    lists = max(1, min(IVFPQ_MAX_LISTS, count // _TRAIN_PER_LIST, int(2 * math.sqrt(count))))
    subs, quantizer = _pq_shape(dim), faiss.IndexFlatIP(dim)
    if subs:  # 4-bit codes scanned with SIMD: ~20x faster than 8-bit codes, as accurate per byte
        index = faiss.IndexIVFPQFastScan(quantizer, dim, lists, subs, 4, faiss.METRIC_INNER_PRODUCT)
    else:
        subs = next(m for m in range(max(1, dim // 8), 0, -1) if dim % m == 0)
        bits = max(1, min(8, int(math.log2(max(2, count // _TRAIN_PER_LIST)))))
        index = faiss.IndexIVFPQ(quantizer, dim, lists, subs, bits, faiss.METRIC_INNER_PRODUCT)
    index.pq.cp.niter = 10  # faiss's 25 k-means rounds per sub-quantizer cost 2x the build's training
    index.train(_training_sample(store, min(count, max(_TRAIN_PER_LIST * lists, 256 * 64))))
    return index


def build_ann_index(store: StoreReader, *, kind: str = "auto") -> Path:
    """Build an approximate inner-product index of the store's images and save it beside the store.

    `kind`: "auto", or one of KINDS (see the module docstring). The vectors are streamed from the
    store's blocks; memory is the index itself plus BUILD_ROWS float32 rows and the training sample.
    """
    faiss = _faiss()
    if faiss is None:
        raise ClipWidgetsError("Building an approximate index needs faiss: pip install 'clipwidgets[ann]' "
                               "(or faiss-cpu). Exact search works without it.")
    if kind not in (*KINDS, "auto"):
        raise InvalidInputError(f"Unknown index kind {kind!r}: use auto or one of {', '.join(KINDS)}.")
    count, dim = store.num_images, int(store.model_meta["embed_dim"])
    if count == 0:
        raise InvalidInputError(f"The store {store.path} has no images: index some before building an "
                                "approximate index.")
    if kind == "auto":
        kind = "hnsw" if count < AUTO_IVFPQ_ROWS else "ivfpq"
    index = _new_index(faiss, store, kind, count, dim)
    for chunk in live_chunks(store):  # faiss numbers the rows in the order added: the store's rows
        index.add(chunk)
    if index.ntotal != count:
        raise ClipWidgetsError(f"The store {store.path} changed while its index was built "
                               f"({index.ntotal} rows read, {count} expected); build it again.")
    index_file, meta_file = index_paths(store)
    meta = {"kind": kind, "rows": count, "dim": dim, "fingerprint": store_fingerprint(store),
            "model": {key: store.model_meta.get(key) for key in ("name", "pretrained")}}
    temporary = index_file.with_name(index_file.name + ".tmp")
    faiss.write_index(index, str(temporary))
    os.replace(temporary, index_file)
    meta_file.write_text(json.dumps(meta, indent=2) + "\n")
    return index_file


class AnnIndex:
    """A loaded faiss index: `search(vector, count)` returns candidate rows, best first."""

    def __init__(self, index: Any, kind: str) -> None:
        self.index, self.kind = index, kind
        if kind == "ivf":
            index.nprobe = max(1, math.ceil(index.nlist * IVF_PROBE_FRACTION))
        elif kind == "ivfpq":  # enough lists to hold twice the candidates (small stores: short lists)
            per_list = max(1.0, index.ntotal / index.nlist)
            index.nprobe = min(index.nlist, max(IVFPQ_PROBES, 2 * math.ceil(IVFPQ_CANDIDATES / per_list)))

    def search(self, vector: np.ndarray, count: int) -> np.ndarray:
        """Candidate rows for `vector`, best first by the index's own scores: `count` of them, or
        IVFPQ_CANDIDATES for "ivfpq" when that is more (its scores are coarse; callers re-score)."""
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = max(HNSW_EF_SEARCH, count)
        elif self.kind == "ivfpq":
            count = min(self.index.ntotal, max(count, IVFPQ_CANDIDATES))
        _, rows = self.index.search(np.ascontiguousarray(vector, dtype=np.float32)[None, :], count)
        rows = rows[0]
        return rows[rows >= 0].astype(np.int64)


def ann_status(store: StoreReader) -> tuple[AnnIndex | None, str]:
    """The fresh approximate index of `store`, or None, and a sentence saying which and why."""
    index_file, meta_file = index_paths(store)
    faiss = _faiss()
    if faiss is None:
        return None, "faiss is not installed (pip install 'clipwidgets[ann]'): exact search."
    if not index_file.is_file() or not meta_file.is_file():
        return None, (f"no approximate index beside {store.path}: exact search "
                      "(clipwidgets.ann.build_ann_index(store) builds one).")
    try:
        meta = json.loads(meta_file.read_text())
        fresh = meta.get("rows") == store.num_images and meta.get("fingerprint") == store_fingerprint(store)
    except (OSError, ValueError) as error:
        return None, f"the approximate index metadata {meta_file} is unreadable ({error}): exact search."
    if not fresh:
        return None, (f"the approximate index {index_file.name} predates the store's last change: exact "
                      "search until it is rebuilt with clipwidgets.ann.build_ann_index(store).")
    try:
        index = faiss.read_index(str(index_file))
    except RuntimeError as error:
        return None, f"the approximate index {index_file} cannot be read ({error}): exact search."
    return AnnIndex(index, meta["kind"]), f"approximate {meta['kind']} index {index_file.name}."


def load_ann_index(store: StoreReader) -> AnnIndex | None:
    """The fresh approximate index of `store`, or None (missing, stale, unreadable, or no faiss)."""
    return ann_status(store)[0]


def _faiss() -> Any:
    try:
        import faiss
    except ImportError:
        return None
    return faiss
