"""Optional approximate index (faiss HNSW or IVF) for stores beyond a few million images.

`build_ann_index(store)` writes `<store>.faiss` and `<store>.faiss.json` beside the store; the JSON
records the store's row count and a fingerprint of its paths and embeddings, so an index built
before the store changed is recognised as stale and ignored. faiss is optional
(`pip install "clipwidgets[ann]"`); without it every search is exact.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ClipWidgetsError, InvalidInputError
from .types import StoreReader

__all__ = [
    "AnnIndex", "HNSW_EF_CONSTRUCTION", "HNSW_EF_SEARCH", "HNSW_NEIGHBOURS", "IVF_PROBE_FRACTION", "KINDS",
    "ann_status", "build_ann_index", "index_paths", "load_ann_index", "store_fingerprint"
]

KINDS = ("hnsw", "ivf")
HNSW_NEIGHBOURS = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128
IVF_PROBE_FRACTION = 1 / 8
_FINGERPRINT_ROWS = 4096


def index_paths(store: StoreReader) -> tuple[Path, Path]:
    """(index file, metadata file) beside `store`."""
    base = Path(store.path)
    return base.with_name(base.name + ".faiss"), base.with_name(base.name + ".faiss.json")


def store_fingerprint(store: StoreReader) -> str:
    """A digest of the store's row count, dimension, and a strided sample of paths and embeddings
    (read with `store.image_vectors`, so a segmented store is sampled, not loaded)."""
    paths = store.image_paths()
    step = max(1, len(paths) // _FINGERPRINT_ROWS)
    sample = store.image_vectors(np.arange(0, len(paths), step, dtype=np.int64))
    last = store.image_vectors(np.arange(len(paths) - 1, len(paths), dtype=np.int64)[-1:])
    shape = (len(paths), int(store.model_meta["embed_dim"]))
    digest = hashlib.sha1(f"{len(paths)}:{shape}:{sample.dtype}".encode())
    digest.update(np.ascontiguousarray(sample).tobytes())
    digest.update(np.ascontiguousarray(last).tobytes())
    digest.update("\n".join(paths[::step] + paths[-1:]).encode())
    return digest.hexdigest()


def build_ann_index(store: StoreReader, *, kind: str = "hnsw") -> Path:
    """Build an approximate inner-product index of the store's images and save it beside the store."""
    faiss = _faiss()
    if faiss is None:
        raise ClipWidgetsError("Building an approximate index needs faiss: pip install 'clipwidgets[ann]' "
                               "(or faiss-cpu). Exact search works without it.")
    if kind not in KINDS:
        raise InvalidInputError(f"Unknown index kind {kind!r}: use one of {', '.join(KINDS)}.")
    vectors = np.ascontiguousarray(store.image_embeddings(), dtype=np.float32)
    count, dim = vectors.shape
    if count == 0:
        raise InvalidInputError(f"The store {store.path} has no images: index some before building an "
                                "approximate index.")
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    else:
        lists = max(1, min(count // 39, int(4 * math.sqrt(count))))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(0).choice(count, size=min(count, 256 * lists), replace=False)
        index.train(vectors[np.sort(sample)])
    index.add(vectors)
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

    def search(self, vector: np.ndarray, count: int) -> np.ndarray:
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = max(HNSW_EF_SEARCH, count)
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
