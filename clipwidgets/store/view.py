"""StoreView: the read side of EmbeddingStore, over one snapshot (committed, or a writer's pending one)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import InvalidInputError, ModelMismatchError
from ..images import scan_images
from .format import FORMAT_NAME, check_model_meta, model_label, same_model
from .manifest import segments_folder
from .merge import plan_merge
from .snapshot import SkippedFile, Snapshot
from .validation import relative_path, safe_stored_path

__all__ = ["StoreDiff", "StoreView", "VectorBlock"]


@dataclass(frozen=True)
class VectorBlock:
    """A run of image vectors as search reads them: `vectors[i]` is the embedding of store row
    `rows[i]`, or of a deleted image where `rows[i]` is -1 (never a result). A format-2 store gives
    one block per segment, memory-mapped; pending rows of a writer are one more block."""

    vectors: np.ndarray  # (n, dim) in the store's dtype, mapped copy-on-write: never written to the file
    rows: np.ndarray  # (n,) int64


@dataclass(frozen=True)
class StoreDiff:
    """How a folder differs from a store; every list holds sorted relative paths."""

    new: list[str]
    changed: list[str]
    removed: list[str]
    unchanged: list[str]
    skipped_unchanged: list[str]


class StoreView:
    """Read methods shared by readers and writers; `_view` is the snapshot they read."""

    path: Path
    _attrs: dict[str, Any]

    @property
    def _view(self) -> Snapshot:
        raise NotImplementedError

    # ----- what the store describes -----

    @property
    def model_meta(self) -> dict[str, Any]:
        return dict(self._attrs["model_meta"])

    @property
    def image_root(self) -> Path:
        return self._attrs["image_root"]

    @property
    def dim(self) -> int:
        return int(self._attrs["model_meta"]["embed_dim"])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._attrs["dtype"])

    @property
    def format_version(self) -> int:
        return int(self._attrs["format_version"])

    @property
    def num_images(self) -> int:
        return self._view.num_images

    @property
    def num_texts(self) -> int:
        return len(self._view.texts)

    def __len__(self) -> int:
        return self.num_images

    def check_model(self, model_meta: Mapping[str, Any]) -> None:
        """Raise ModelMismatchError unless `model_meta` names the model this store's embeddings came from."""
        check_model_meta(model_meta)
        ours = self._attrs["model_meta"]
        if not same_model(ours, model_meta):
            raise ModelMismatchError(
                f"{self.path} holds embeddings of {model_label(ours)} ({ours['embed_dim']}-d); the encoder "
                f"is {model_label(model_meta)} ({model_meta['embed_dim']}-d). Use --model {ours['name']} "
                f"--pretrained {ours['pretrained']} with this store, or index into a new store.")

    # ----- images -----

    def image_paths(self) -> list[str]:
        """Every image path in row order (decodes them all: about 0.3 s per million rows)."""
        snap = self._view
        out: list[str] = []
        for k, segment in enumerate(snap.segments):
            if len(snap.layout.dead_local[k]):
                paths = segment.paths()
                out.extend(paths[i] for i in snap.live_locals(k).tolist())
            else:
                out.extend(segment.paths())
        return out

    def image_path(self, row: int) -> str:
        """The relative path of one image row, decoded on its own."""
        row = self._check_row(row)
        seg, local = self._view.locate_rows(np.array([row], np.int64))
        return self._view.segments[int(seg[0])].path(int(local[0]))

    def image_embeddings(self) -> np.ndarray:
        """All image embeddings, (N, D) in the store dtype.

        A store of one segment without tombstones gives its memory map (no copy; mapped copy-on-write,
        so writes to it stay in this process); otherwise the live rows are copied into one array
        (N x D x 2 bytes: 10 GB at 10M x 512). Search reads `vector_blocks()` instead, which never copies.
        """
        snap = self._view
        if len(snap.segments) == 1 and not len(snap.layout.dead_local[0]):
            return snap.segments[0].vectors
        parts = [s.vectors if not len(snap.layout.dead_local[k]) else s.vectors[snap.live_locals(k)]
                 for k, s in enumerate(snap.segments)]
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), self.dtype)

    def image_vectors(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """The embeddings of some image rows, (len(rows), D) in the store dtype, read from their
        segments: what code that needs a few rows (a query image, marked results) uses instead of
        `image_embeddings()`, which copies every row of a segmented store."""
        wanted = np.asarray(rows, dtype=np.int64).reshape(-1)
        bad = wanted[(wanted < 0) | (wanted >= self.num_images)]
        if len(bad):
            self._check_row(int(bad[0]))
        out = np.empty((len(wanted), self.dim), self.dtype)
        seg, local = self._view.locate_rows(wanted)
        for k in np.unique(seg).tolist():
            mine = seg == k
            out[mine] = self._view.segments[k].vectors[local[mine]]
        return out

    def vector_blocks(self) -> list[VectorBlock]:
        """The image embeddings as blocks for search (see VectorBlock), one per segment, in row order."""
        snap = self._view
        return [VectorBlock(segment.vectors, snap.block_rows(k)) for k, segment in enumerate(snap.segments)]

    def image_meta(self) -> dict[str, np.ndarray]:
        """size, mtime_ns, width and height of every image row (concatenated: 24 bytes per row)."""
        snap = self._view
        out = {}
        for name in ("size", "mtime_ns", "width", "height"):
            parts = [np.asarray(s.columns[name][snap.live_locals(k)]) for k, s in enumerate(snap.segments)]
            dtype = np.int32 if name in ("width", "height") else np.int64
            out[name] = np.concatenate(parts) if parts else np.zeros(0, dtype)
        return out

    def index_of(self, path: str | os.PathLike[str]) -> int:
        """Row of the image at `path` (relative to the image root, or absolute inside it)."""
        relpath = relative_path(path, self.image_root)
        row = int(self._view.find_paths([relpath])[0])
        if row < 0:
            raise InvalidInputError(f"{relpath!r} is not in store {self.path} "
                                    f"({self.num_images} images).")
        return row

    def abspath(self, index_or_relpath: int | str | os.PathLike[str]) -> Path:
        """The absolute path of an image, given its row or its relative path; always inside the image root.

        Stored paths are checked again (a crafted file may hold `../secret.jpg` or `/etc/passwd`).
        """
        if isinstance(index_or_relpath, (int, np.integer)):
            return safe_stored_path(self.image_path(int(index_or_relpath)), self.image_root, self.path)
        return self.image_root / relative_path(index_or_relpath, self.image_root)

    def _check_row(self, row: int) -> int:
        row = int(row)
        if not 0 <= row < self.num_images:
            raise InvalidInputError(f"Image index {row} is out of range: store {self.path} has "
                                    f"{self.num_images} images.")
        return row

    # ----- texts, skipped files, subsets -----

    def texts(self) -> list[str]:
        return list(self._view.texts.text)

    def text_embeddings(self) -> np.ndarray:
        return self._view.texts.embeddings

    def text_image_index(self) -> np.ndarray:
        """The image row each text describes (-1: none)."""
        return self._view.text_rows()

    def text_sources(self) -> list[str]:
        return list(self._view.texts.source)

    def captions(self, index: int) -> list[str]:
        """Texts linked to image `index`, in insertion order."""
        order, sorted_rows = self._view.captions_order()
        start, stop = np.searchsorted(sorted_rows, [index, index + 1])
        texts = self._view.texts.text
        return [texts[i] for i in order[start:stop].tolist()]

    def skipped(self) -> list[SkippedFile]:
        return list(self._view.skipped.values())

    def subsets(self) -> dict[str, np.ndarray]:
        """Named subsets (e.g. dataset splits) as int64 rows of the images present now."""
        out = {}
        for name, paths in self._view.subsets.items():
            rows = self._view.find_paths(list(paths))
            out[name] = rows[rows >= 0]
        return out

    # ----- comparing with a folder; summary -----

    def diff(self, files: Mapping[str, tuple[int, int]] | str | os.PathLike[str]) -> StoreDiff:
        """Compare with a folder scan ({relpath: (size, mtime_ns)}) or with a folder itself.

        "changed" means size or mtime differ. A skipped file with the same size and mtime goes to
        `skipped_unchanged` (not retried); a changed one counts as new. Images and skip records whose
        files are gone are `removed`. Stored paths are looked up by hash, so only the paths of removed
        images are decoded.
        """
        if isinstance(files, (str, os.PathLike)):
            if not Path(files).is_dir():
                raise InvalidInputError(f"Image folder {files} does not exist.")
            files = scan_images(files)
        snap = self._view
        names = list(files)
        rows = snap.find_paths(names)
        found = rows >= 0
        scan = np.array([(int(size), int(mtime)) for size, mtime in files.values()], np.int64).reshape(-1, 2)
        meta = self._meta_of_rows(rows[found])
        same = np.zeros(len(names), bool)
        same[found] = (meta["size"] == scan[found, 0]) & (meta["mtime_ns"] == scan[found, 1])
        unchanged = [names[i] for i in np.flatnonzero(same).tolist()]
        changed = [names[i] for i in np.flatnonzero(found & ~same).tolist()]
        new: list[str] = []
        skipped_unchanged: list[str] = []
        for i in np.flatnonzero(~found).tolist():
            record = snap.skipped.get(names[i])
            stamp = (int(scan[i, 0]), int(scan[i, 1]))
            if record is not None and (record.size, record.mtime_ns) == stamp:
                skipped_unchanged.append(names[i])
            else:
                new.append(names[i])
        removed = {path for path in snap.skipped if path not in files}
        if int(found.sum()) < snap.num_images:  # some stored images were not found: decode only those
            present = np.zeros(snap.num_images, bool)
            present[rows[found]] = True
            removed.update(self._paths_of_rows(np.flatnonzero(~present)))
        return StoreDiff(new=sorted(new), changed=sorted(changed), removed=sorted(removed),
                         unchanged=sorted(unchanged), skipped_unchanged=sorted(skipped_unchanged))

    def _paths_of_rows(self, rows: np.ndarray) -> list[str]:
        snap = self._view
        seg, local = snap.locate_rows(rows)
        out: list[str] = []
        for k in np.unique(seg).tolist():
            segment = snap.segments[k]
            out.extend(segment.path(i) for i in local[seg == k].tolist())
        return out

    def _meta_of_rows(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        snap = self._view
        seg, local = snap.locate_rows(rows)
        out = {name: np.zeros(len(rows), np.int64) for name in ("size", "mtime_ns")}
        for k in np.unique(seg).tolist():
            mine = seg == k
            for name in out:
                out[name][mine] = snap.segments[k].columns[name][local[mine]]
        return out

    def info(self) -> dict[str, Any]:
        """A JSON-ready summary: counts, model, format and file details."""
        meta = self._attrs["model_meta"]
        snap = self._view
        folder = segments_folder(self.path)
        files = [s.file_bytes for s in snap.segments]
        return {
            "path": str(self.path),
            "format_name": FORMAT_NAME,
            "format_version": self.format_version,
            "images": self.num_images,
            "texts": self.num_texts,
            "skipped": len(snap.skipped),
            "model": model_label(meta),
            "model_meta": dict(meta),
            "dim": self.dim,
            "dtype": self.dtype.name,
            "normalized": True,
            "image_root": str(self.image_root),
            "created": snap.created,
            "updated": snap.updated,
            "clipwidgets_version": self._attrs.get("clipwidgets_version") or __version__,
            "size_bytes": (self.path.stat().st_size if self.path.exists() else 0) + int(sum(files)),
            "segments": len(snap.segments),
            "segments_folder": str(folder),
            "segment_bytes": int(sum(files)),
            "tombstones": int(len(snap.dead)),
            "merges_due": plan_merge(*snap.sizes(), budget=float("inf")) is not None,  # compact runs them
            "subsets": {name: len(rows) for name, rows in self.subsets().items()},
        }
