"""EmbeddingStore: one self-describing, crash-safe HDF5 file per image collection.

The file layout is documented in docs/store.md. A writer (mode "a") holds the whole store in memory
and commits by writing a complete new file next to the store and renaming it over the old one, so a
crash at any moment leaves either the previous or the new complete file. Readers (mode "r") load a
snapshot at open and keep no file handle; `refresh()` picks up what a writer committed since.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import errno
import json
import os
import re
import secrets
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from . import __version__
from .errors import InvalidInputError, ModelMismatchError, StoreError
from .images import scan_images

if sys.platform == "win32":  # the writer lock: msvcrt on Windows (untested there), flock elsewhere
    import msvcrt
else:
    import fcntl

__all__ = [
    "DTYPES", "EmbeddingStore", "FORMAT_NAME", "FORMAT_VERSION", "NORM_TOLERANCE", "SEED_IMAGE_EXTENSIONS",
    "SkippedFile", "StoreDiff", "VectorBlock", "import_npy", "read_captions", "read_model_meta"
]

FORMAT_NAME = "clipwidgets.store"
FORMAT_VERSION = 1
DTYPES = ("float16", "float32")
NORM_TOLERANCE = 1e-2
SEED_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
_MODEL_KEYS = ("name", "pretrained", "embed_dim")
_STRING = h5py.string_dtype("utf-8")


@dataclass(frozen=True)
class VectorBlock:
    """A run of image vectors as search reads them: `vectors[i]` is the embedding of store row
    `rows[i]`, or of a deleted image where `rows[i]` is -1 (never a result). Format v1 stores are one
    block; a segmented store gives one per segment, memory-mapped."""

    vectors: np.ndarray  # (n, dim) in the store's dtype, read-only
    rows: np.ndarray  # (n,) int64


@dataclass(frozen=True)
class SkippedFile:
    """A file the indexer could not embed, remembered so an unchanged one is not retried."""

    path: str
    reason: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class StoreDiff:
    """How a folder differs from a store; every list holds sorted relative paths."""

    new: list[str]
    changed: list[str]
    removed: list[str]
    unchanged: list[str]
    skipped_unchanged: list[str]


@dataclass
class _Contents:
    """Everything a store holds, as plain arrays and lists; edits replace arrays, never mutate them."""

    paths: list[str]
    image_embeddings: np.ndarray
    sizes: np.ndarray
    mtimes_ns: np.ndarray
    widths: np.ndarray
    heights: np.ndarray
    texts: list[str]
    text_embeddings: np.ndarray
    text_image_index: np.ndarray
    text_sources: list[str]
    skipped: dict[str, SkippedFile]
    subsets: dict[str, list[str]]
    created: str
    updated: str
    _row_of: dict[str, int] | None = dataclasses.field(default=None, repr=False, compare=False)
    _captions_order: tuple[np.ndarray, np.ndarray] | None = dataclasses.field(
        default=None, repr=False, compare=False)

    @classmethod
    def empty(cls, dim: int, dtype: str) -> _Contents:
        now = _now()
        return cls(paths=[], image_embeddings=np.zeros((0, dim), dtype), sizes=_int64([]),
                   mtimes_ns=_int64([]), widths=_int32([]), heights=_int32([]), texts=[],
                   text_embeddings=np.zeros((0, dim), dtype), text_image_index=_int64([]),
                   text_sources=[], skipped={}, subsets={}, created=now, updated=now)

    def copy(self) -> _Contents:
        return dataclasses.replace(self, paths=list(self.paths), texts=list(self.texts),
                                   text_sources=list(self.text_sources), skipped=dict(self.skipped),
                                   subsets={name: list(paths) for name, paths in self.subsets.items()},
                                   _row_of=None if self._row_of is None else dict(self._row_of))

    def row_of(self) -> dict[str, int]:
        """{relative path: image row}, built once and kept up to date by appends."""
        if self._row_of is None:
            self._row_of = {path: row for row, path in enumerate(self.paths)}
        return self._row_of

    def captions_order(self) -> tuple[np.ndarray, np.ndarray]:
        """(text rows sorted by linked image, their image rows): captions of image i by bisection."""
        if self._captions_order is None:
            order = np.argsort(self.text_image_index, kind="stable")
            self._captions_order = (order, self.text_image_index[order])
        return self._captions_order


class EmbeddingStore:
    """Image and text embeddings of one collection, with the model and files they came from."""

    def __init__(self, path: Path, mode: str, attrs: dict[str, Any], contents: _Contents, *,
                 signature: tuple[int, int, int] | None, lock_fd: int | None = None) -> None:
        self.path = path
        self.mode = mode
        self._attrs = attrs
        self._contents = contents
        self._pending: _Contents | None = None
        self._lock_fd = lock_fd
        self._signature = signature  # of the file as it was just before `contents` were read
        self.closed = False

    # ----- opening and closing -----

    @classmethod
    def create(cls, path: str | os.PathLike[str], model_meta: dict[str, Any],
               image_root: str | os.PathLike[str], *, dtype: str = "float16") -> EmbeddingStore:
        """Create a new, empty store at `path` and open it for writing; refuses an existing path."""
        path = Path(path).absolute()
        _check_model_meta(model_meta)
        if dtype not in DTYPES:
            raise InvalidInputError(f"Unknown store dtype {dtype!r}: use one of {', '.join(DTYPES)}.")
        if path.exists():
            raise StoreError(f"{path} already exists; open it with EmbeddingStore.open(path, mode='a') "
                             "or choose another file name. Nothing was changed.")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreError(f"Cannot create the folder for store {path}: {error}.") from error
        lock_fd = _lock(path)
        try:
            if path.exists():
                raise StoreError(f"{path} was created by another process just now; open it instead.")
            _remove_stale_temp_files(path)  # from a create that was killed before its first commit
            attrs = {
                "model_meta": dict(model_meta),
                "dtype": dtype,
                "image_root": Path(image_root).expanduser().resolve(),
                "format_version": FORMAT_VERSION,
            }
            store = cls(path, "a", attrs, _Contents.empty(int(model_meta["embed_dim"]), dtype),
                        signature=None, lock_fd=lock_fd)
            store._commit(store._contents)
        except BaseException:
            _unlock(lock_fd)
            raise
        return store

    @classmethod
    def open(cls, path: str | os.PathLike[str], mode: str = "r") -> EmbeddingStore:
        """Open an existing store: mode "r" reads a snapshot, mode "a" also writes (one writer at a time)."""
        if mode not in ("r", "a"):
            raise InvalidInputError(f"Unknown store mode {mode!r}: use 'r' to read or 'a' to write.")
        path = Path(path).absolute()
        if path.is_dir():
            raise StoreError(f"{path} is a folder; give the path of a store file such as "
                             f"{path / 'photos.h5'}.")
        if not path.is_file():
            raise StoreError(f"Store {path} does not exist. Build it with `clipwidgets index` "
                             "or EmbeddingStore.create().")
        lock_fd = None
        if mode == "a":
            _open_checked(path).close()  # refuse a foreign or newer file before creating its lock file
            lock_fd = _lock(path)
        try:
            signature = _signature(path)  # before reading: a commit in between shows up as a change
            attrs, contents = _read(path)
            if mode == "a":
                _remove_stale_temp_files(path)
            return cls(path, mode, attrs, contents, signature=signature, lock_fd=lock_fd)
        except BaseException:
            _unlock(lock_fd)
            raise

    @classmethod
    def open_or_create(cls, path: str | os.PathLike[str], model_meta: dict[str, Any],
                       image_root: str | os.PathLike[str], *, dtype: str = "float16") -> EmbeddingStore:
        """Open `path` for writing after checking its model and image root, or create it when missing."""
        if not Path(path).exists():
            return cls.create(path, model_meta, image_root, dtype=dtype)
        store = cls.open(path, "a")
        try:
            store.check_model(model_meta)
            wanted = Path(image_root).expanduser().resolve()
            if store.image_root.resolve() != wanted:
                raise StoreError(f"{store.path} indexes images under {store.image_root}, not {wanted}. "
                                 "Use a new store for another folder, or index the same folder.")
        except BaseException:
            store.close()
            raise
        return store

    def close(self) -> None:
        """Release the writer's lock; the data already read stays readable."""
        if self._pending is not None:
            raise StoreError(f"Cannot close {self.path} inside a batch(); leave the `with` block first.")
        _unlock(self._lock_fd)
        self._lock_fd = None
        self.closed = True

    def __enter__(self) -> EmbeddingStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"EmbeddingStore({str(self.path)!r}, mode={self.mode!r}, images={self.num_images}, "
                f"texts={self.num_texts}, model={_model_label(self.model_meta)!r})")

    def refresh(self) -> bool:
        """Reload when another process committed since this snapshot; True when something changed."""
        if self.mode == "a":
            return False
        signature = _signature(self.path)
        if signature is None:
            raise StoreError(f"Store {self.path} has disappeared; the data loaded earlier is still usable.")
        if signature == self._signature:
            return False
        self._attrs, contents = _read(self.path)
        self._contents = contents
        self._signature = signature
        return True

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
        return len(self._view.paths)

    @property
    def num_texts(self) -> int:
        return len(self._view.texts)

    def __len__(self) -> int:
        return self.num_images

    def check_model(self, model_meta: Mapping[str, Any]) -> None:
        """Raise ModelMismatchError unless `model_meta` names the model this store's embeddings came from."""
        _check_model_meta(model_meta)
        ours = self._attrs["model_meta"]
        if any(_model_key(ours, key) != _model_key(model_meta, key) for key in _MODEL_KEYS):
            raise ModelMismatchError(
                f"{self.path} holds embeddings of {_model_label(ours)} ({ours['embed_dim']}-d); the encoder "
                f"is {_model_label(model_meta)} ({model_meta['embed_dim']}-d). Use --model {ours['name']} "
                f"--pretrained {ours['pretrained']} with this store, or index into a new store.")

    # ----- reading -----

    def image_paths(self) -> list[str]:
        return list(self._view.paths)

    def image_embeddings(self) -> np.ndarray:
        """All image embeddings, (N, D) in the store dtype; the array is shared, not copied."""
        return self._view.image_embeddings

    def vector_blocks(self) -> list[VectorBlock]:
        """The image embeddings as blocks for search (see VectorBlock); rows in store order."""
        return [VectorBlock(self.image_embeddings(), np.arange(self.num_images, dtype=np.int64))]

    def image_meta(self) -> dict[str, np.ndarray]:
        view = self._view
        return {"size": view.sizes, "mtime_ns": view.mtimes_ns, "width": view.widths, "height": view.heights}

    def index_of(self, path: str | os.PathLike[str]) -> int:
        """Row of the image at `path` (relative to the image root, or absolute inside it)."""
        relpath = self._relpath(path)
        try:
            return self._view.row_of()[relpath]
        except KeyError:
            raise InvalidInputError(f"{relpath!r} is not in store {self.path} "
                                    f"({self.num_images} images).") from None

    def abspath(self, index_or_relpath: int | str | os.PathLike[str]) -> Path:
        """The absolute path of an image, given its row or its relative path; always inside the image root."""
        if isinstance(index_or_relpath, (int, np.integer)):
            index = int(index_or_relpath)
            if not 0 <= index < self.num_images:
                raise InvalidInputError(f"Image index {index} is out of range: store {self.path} has "
                                        f"{self.num_images} images.")
            return self.image_root / self._view.paths[index]
        return self.image_root / self._relpath(index_or_relpath)

    def texts(self) -> list[str]:
        return list(self._view.texts)

    def text_embeddings(self) -> np.ndarray:
        return self._view.text_embeddings

    def text_image_index(self) -> np.ndarray:
        return self._view.text_image_index

    def text_sources(self) -> list[str]:
        return list(self._view.text_sources)

    def captions(self, index: int) -> list[str]:
        """Texts linked to image `index`, in insertion order."""
        order, sorted_index = self._view.captions_order()
        start, stop = np.searchsorted(sorted_index, [index, index + 1])
        texts = self._view.texts
        return [texts[i] for i in order[start:stop]]

    def skipped(self) -> list[SkippedFile]:
        return list(self._view.skipped.values())

    def subsets(self) -> dict[str, np.ndarray]:
        """Named subsets (e.g. dataset splits) as int64 rows of the images present now."""
        row_of = self._view.row_of()
        return {name: np.array([row_of[p] for p in paths if p in row_of], dtype=np.int64)
                for name, paths in self._view.subsets.items()}

    def diff(self, files: Mapping[str, tuple[int, int]] | str | os.PathLike[str]) -> StoreDiff:
        """Compare with a folder scan ({relpath: (size, mtime_ns)}) or with a folder itself.

        "changed" means size or mtime differ. A skipped file with the same size and mtime goes to
        `skipped_unchanged` (not retried); a changed one counts as new. Images and skip records whose
        files are gone are `removed`.
        """
        if isinstance(files, (str, os.PathLike)):
            if not Path(files).is_dir():
                raise InvalidInputError(f"Image folder {files} does not exist.")
            files = scan_images(files)
        view = self._view
        known = {path: (int(size), int(mtime)) for path, size, mtime in
                 zip(view.paths, view.sizes.tolist(), view.mtimes_ns.tolist(), strict=True)}
        new: list[str] = []
        changed: list[str] = []
        unchanged: list[str] = []
        skipped_unchanged: list[str] = []
        for path, (size, mtime) in files.items():
            stamp = (int(size), int(mtime))
            if path in known:
                (unchanged if known[path] == stamp else changed).append(path)
            elif path in view.skipped and (view.skipped[path].size, view.skipped[path].mtime_ns) == stamp:
                skipped_unchanged.append(path)
            else:
                new.append(path)
        removed = [path for path in [*known, *view.skipped] if path not in files]
        return StoreDiff(new=sorted(new), changed=sorted(changed), removed=sorted(set(removed)),
                         unchanged=sorted(unchanged), skipped_unchanged=sorted(skipped_unchanged))

    def info(self) -> dict[str, Any]:
        """A JSON-ready summary: counts, model, format and file details."""
        meta = self._attrs["model_meta"]
        view = self._view
        return {
            "path": str(self.path),
            "format_name": FORMAT_NAME,
            "format_version": self.format_version,
            "images": self.num_images,
            "texts": self.num_texts,
            "skipped": len(view.skipped),
            "model": _model_label(meta),
            "model_meta": dict(meta),
            "dim": self.dim,
            "dtype": self.dtype.name,
            "normalized": True,
            "image_root": str(self.image_root),
            "created": view.created,
            "updated": view.updated,
            "clipwidgets_version": self._attrs.get("clipwidgets_version", __version__),
            "size_bytes": self.path.stat().st_size if self.path.exists() else 0,
            "subsets": {name: len(rows) for name, rows in self.subsets().items()},
        }

    # ----- writing -----

    @contextlib.contextmanager
    def batch(self) -> Iterator[EmbeddingStore]:
        """Group several edits into one commit at the end of the block; nothing is committed if it raises."""
        self._require_writer()
        if self._pending is not None:  # nested: the outermost batch commits
            yield self
            return
        self._pending = self._contents.copy()
        try:
            yield self
        except BaseException:
            self._pending = None
            raise
        pending, self._pending = self._pending, None
        self._commit(pending)

    def add_images(self, paths: Sequence[str | os.PathLike[str]], embeddings: np.ndarray, *,
                   sizes: Sequence[int], mtimes_ns: Sequence[int], widths: Sequence[int],
                   heights: Sequence[int]) -> None:
        """Append images; a path already in the store has its row replaced (an updated file)."""
        self._require_writer()
        relpaths = self._relpaths(paths)
        count = len(relpaths)
        rows = self._validated_embeddings(embeddings, count, lambda i: f"image {relpaths[i]!r}", "image")
        columns = {}
        for name, values, make in (("sizes", sizes, _int64), ("mtimes_ns", mtimes_ns, _int64),
                                   ("widths", widths, _int32), ("heights", heights, _int32)):
            column = make(values)
            if column.shape != (count,):
                raise InvalidInputError(f"add_images got {count} paths but {len(column)} {name}.")
            columns[name] = column
        with self.batch():
            contents = self._view
            row_of = contents.row_of()
            existing = np.array([row_of.get(p, -1) for p in relpaths], dtype=np.int64)
            contents.image_embeddings = _replace_and_append(contents.image_embeddings, existing, rows)
            for name, column in columns.items():
                setattr(contents, name, _replace_and_append(getattr(contents, name), existing, column))
            for path, row in zip(relpaths, existing.tolist(), strict=True):
                if row < 0:
                    row_of[path] = len(contents.paths)
                    contents.paths.append(path)
            for path in relpaths:
                contents.skipped.pop(path, None)

    def add_texts(self, texts: Sequence[str], embeddings: np.ndarray, *,
                  image_index: Sequence[int] | None = None, sources: Sequence[str] | None = None) -> None:
        """Append texts (captions, saved queries), each linked to an image row or to none (-1)."""
        self._require_writer()
        if isinstance(texts, str) or not all(isinstance(text, str) for text in texts):
            raise InvalidInputError("add_texts takes a list of strings.")
        count = len(texts)
        def label(i: int) -> str:
            return f"text {i} ({texts[i][:40]!r})"

        rows = self._validated_embeddings(embeddings, count, label, "text")
        links = _int64([-1] * count if image_index is None else image_index)
        tags = [""] * count if sources is None else list(sources)
        if links.shape != (count,) or len(tags) != count:
            raise InvalidInputError(f"add_texts got {count} texts, {len(links)} image indices "
                                    f"and {len(tags)} sources; give one of each per text.")
        with self.batch():
            contents = self._view
            bad = np.flatnonzero((links < -1) | (links >= len(contents.paths)))
            if bad.size:
                raise InvalidInputError(f"{label(bad[0])} links to image {links[bad[0]]}, but the store "
                                        f"has {len(contents.paths)} images (use -1 for no image).")
            contents.texts.extend(texts)
            contents.text_embeddings = np.concatenate([contents.text_embeddings, rows])
            contents.text_image_index = np.concatenate([contents.text_image_index, links])
            contents.text_sources.extend(str(tag) for tag in tags)
            contents._captions_order = None

    def add_skipped(self, records: Sequence[SkippedFile]) -> None:
        """Remember files that could not be embedded; replaces an earlier record of the same path."""
        self._require_writer()
        checked = [dataclasses.replace(r, path=self._relpath(r.path), reason=str(r.reason),
                                       size=int(r.size), mtime_ns=int(r.mtime_ns)) for r in records]
        with self.batch():
            for record in checked:
                self._view.skipped[record.path] = record

    def remove(self, paths: Sequence[str | os.PathLike[str]]) -> int:
        """Remove images (with their linked texts) and skip records; returns the image rows removed.

        Paths that are in neither are ignored. Rows keep their order; texts are re-linked to the
        new image rows.
        """
        self._require_writer()
        relpaths = set(self._relpaths(paths, allow_duplicates=True))
        with self.batch():
            contents = self._view
            for path in relpaths:
                contents.skipped.pop(path, None)
            gone = np.array([p in relpaths for p in contents.paths], dtype=np.bool_)
            if not gone.any():
                return 0
            keep = ~gone
            contents.paths = [p for p, kept in zip(contents.paths, keep, strict=True) if kept]
            for name in ("image_embeddings", "sizes", "mtimes_ns", "widths", "heights"):
                setattr(contents, name, np.ascontiguousarray(getattr(contents, name)[keep]))
            new_row = np.cumsum(keep) - 1
            links = contents.text_image_index
            keep_text = (links < 0) | keep[np.clip(links, 0, None)]
            renumbered = np.where(links >= 0, new_row[np.clip(links, 0, None)], -1)
            contents.texts = [t for t, kept in zip(contents.texts, keep_text, strict=True) if kept]
            contents.text_sources = [s for s, kept in zip(contents.text_sources, keep_text, strict=True)
                                     if kept]
            contents.text_embeddings = np.ascontiguousarray(contents.text_embeddings[keep_text])
            contents.text_image_index = renumbered[keep_text].astype(np.int64)
            contents._row_of = contents._captions_order = None
            return int(gone.sum())

    def set_subset(self, name: str, paths: Sequence[str | os.PathLike[str]]) -> None:
        """Store a named subset (e.g. a dataset split) of images already in the store."""
        self._require_writer()
        if not name or "/" in name or name in (".", ".."):
            raise InvalidInputError(f"Subset name {name!r} must be non-empty and contain no '/'.")
        relpaths = self._relpaths(paths)
        with self.batch():
            present = self._view.row_of()
            missing = [path for path in relpaths if path not in present]
            if missing:
                raise InvalidInputError(f"Subset {name!r}: {missing[0]!r} is not in store {self.path} "
                                        f"({len(missing)} of {len(relpaths)} paths missing); add the "
                                        "images first.")
            self._view.subsets[name] = relpaths

    # ----- internals -----

    @property
    def _view(self) -> _Contents:
        """What reads see: the pending batch of a writer, else the committed contents."""
        return self._pending if self._pending is not None else self._contents

    def _require_writer(self) -> None:
        if self.closed:
            raise StoreError(f"Store {self.path} is closed; open it again with mode='a' to change it.")
        if self.mode != "a":
            raise StoreError(f"Store {self.path} is open read-only; open it with mode='a' to change it.")

    def _relpath(self, path: str | os.PathLike[str]) -> str:
        """The POSIX path relative to the image root, refusing anything that escapes it."""
        raw = os.fspath(path)
        if not isinstance(raw, str) or not raw or "\x00" in raw:
            raise InvalidInputError(f"Invalid image path {raw!r}.")
        if os.path.isabs(raw):
            raw = _relative_to(raw, self.image_root)
        parts = [part for part in raw.replace(os.sep, "/").split("/") if part not in ("", ".")]
        if not parts or ".." in parts:
            raise InvalidInputError(f"Image path {os.fspath(path)!r} is outside the image root "
                                    f"{self.image_root}; paths must lie inside it.")
        return "/".join(parts)

    def _relpaths(self, paths: Sequence[str | os.PathLike[str]], *,
                  allow_duplicates: bool = False) -> list[str]:
        if isinstance(paths, (str, os.PathLike)):
            raise InvalidInputError("Pass a list of paths, not a single path.")
        relpaths = [self._relpath(path) for path in paths]
        if not allow_duplicates and len(set(relpaths)) != len(relpaths):
            seen: set[str] = set()
            for duplicate in relpaths:
                if duplicate in seen:
                    raise InvalidInputError(f"Duplicate image path {duplicate!r} in one call; give each "
                                            "path once.")
                seen.add(duplicate)
        return relpaths

    def _validated_embeddings(self, embeddings: np.ndarray, count: int, label: Callable[[int], str],
                              kind: str) -> np.ndarray:
        """Check shape, model dimension, finiteness and unit norm; return rows in the store dtype."""
        rows = np.asarray(embeddings)
        if rows.ndim != 2 or rows.shape[0] != count:
            raise InvalidInputError(f"Expected {count} {kind} embeddings of shape ({count}, {self.dim}), "
                                    f"got an array of shape {rows.shape}.")
        if rows.shape[1] != self.dim:
            meta = self._attrs["model_meta"]
            raise ModelMismatchError(
                f"{self.path} holds {self.dim}-d embeddings of {_model_label(meta)}; these {kind} "
                f"embeddings are {rows.shape[1]}-d, so they come from another model. Use "
                f"--model {meta['name']} --pretrained {meta['pretrained']} or a new store.")
        if not np.issubdtype(rows.dtype, np.floating):
            raise InvalidInputError(f"{kind} embeddings must be floating point, got {rows.dtype}.")
        finite, norms = _finite_and_norms(rows)
        if not finite.all():
            row = int(np.flatnonzero(~finite)[0])
            raise InvalidInputError(f"The embedding of {label(row)} (row {row}) contains NaN or inf; "
                                    "nothing was stored.")
        off = np.abs(norms - 1) > NORM_TOLERANCE
        if off.any():
            row = int(np.flatnonzero(off)[0])
            raise InvalidInputError(f"The embedding of {label(row)} (row {row}) has norm {norms[row]:.4g}; "
                                    "stores hold L2-normalised rows (divide by the norm first).")
        return np.ascontiguousarray(rows, dtype=self.dtype)

    def _commit(self, contents: _Contents) -> None:
        """Write `contents` to a new file and rename it over the store; keep it in memory on success."""
        contents.updated = _now()
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            _write(tmp, self._attrs, contents)
            _fsync_path(tmp)
            os.replace(tmp, self.path)
        except BaseException as error:  # KeyboardInterrupt too: never leave the temp file behind
            with contextlib.suppress(OSError):
                tmp.unlink()
            if not isinstance(error, (OSError, RuntimeError)):  # h5py reports failed writes as either
                raise
            disk_full = getattr(error, "errno", None) == errno.ENOSPC or "No space left" in str(error)
            reason = "the disk is full" if disk_full else str(error)
            raise StoreError(f"Could not save store {self.path}: {reason}. The file still holds its "
                             f"previous state ({len(self._contents.paths)} images)"
                             "; free space or fix permissions and retry.") from error
        with contextlib.suppress(OSError):  # some filesystems cannot fsync a folder; the rename is done
            _fsync_path(self.path.parent)
        self._contents = contents
        self._signature = _signature(self.path)


def read_model_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The model metadata a store records, read from its attributes alone (no embeddings loaded)."""
    path = Path(path)
    with _open_checked(path) as f:
        try:
            return json.loads(_attr_str(f.attrs["model_meta"]))
        except _READ_ERRORS as error:
            raise StoreError(f"Store {path} has no readable model metadata ({error}). It was left "
                             "untouched; rebuild it with `clipwidgets index` into a new file.") from error


def import_npy(store_path: str | os.PathLike[str], image_embeddings_npy: str | os.PathLike[str],
               images_dir: str | os.PathLike[str], *, model_meta: dict[str, Any],
               text_embeddings_npy: str | os.PathLike[str] | None = None, texts: Sequence[str] | None = None,
               image_paths: Sequence[str] | None = None,
               text_image_paths: Sequence[str | None] | None = None,
               text_sources: Sequence[str] | None = None) -> EmbeddingStore:
    """Build a new store from the seed prototype's .npy files and its image folder.

    Rows of `image_embeddings_npy` belong to `image_paths`, by default the prototype's listing:
    `sorted(os.listdir(images_dir))` filtered to .jpg/.jpeg/.png. Counts must match. Raw features
    are L2-normalised on import. `text_image_paths` links each text to an image (None for none).
    `text_sources` tags each text (e.g. "captions#0"). Returns the new store, open for writing.
    """
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise InvalidInputError(f"Image folder {images_dir} does not exist.")
    listed_by_prototype = image_paths is None
    if image_paths is None:
        image_paths = [name for name in sorted(os.listdir(images_dir))
                       if name.lower().endswith(SEED_IMAGE_EXTENSIONS)]
    image_rows = _load_npy(image_embeddings_npy)
    if len(image_rows) != len(image_paths):
        images = (f"{images_dir} has {len(image_paths)} images (.jpg/.jpeg/.png, as the prototype listed "
                  "them)" if listed_by_prototype else f"{len(image_paths)} image paths were given")
        raise InvalidInputError(
            f"{image_embeddings_npy} has {len(image_rows)} rows but {images}: the embeddings are out of "
            "step with the images. Re-index the folder with `clipwidgets index` instead of importing.")
    text_rows, texts = _text_rows(text_embeddings_npy, texts)
    records = [_file_record(images_dir / name) for name in image_paths]
    store = EmbeddingStore.create(store_path, model_meta, images_dir)
    try:
        with store.batch():
            store.add_images(list(image_paths), _normalised(image_rows, image_paths, image_embeddings_npy),
                             sizes=[r[0] for r in records], mtimes_ns=[r[1] for r in records],
                             widths=[r[2] for r in records], heights=[r[3] for r in records])
            if text_rows is not None:
                links = [-1] * len(texts) if text_image_paths is None else [
                    -1 if p is None else store.index_of(p) for p in text_image_paths]
                labels = [f"text {i}" for i in range(len(texts))]
                store.add_texts(texts, _normalised(text_rows, labels, text_embeddings_npy),
                                image_index=links, sources=text_sources)
    except BaseException:
        store.close()
        with contextlib.suppress(OSError):
            Path(store_path).unlink()
        raise
    return store


def read_captions(path: str | os.PathLike[str]) -> tuple[list[str], list[str | None], list[str]]:
    """(texts, image paths or None, source tags) from a captions file of the seed prototype.

    Three layouts: a CSV with the header `image,caption` (Kaggle's Flickr8k captions.txt), Flickr8k's
    token file (`name.jpg#0<TAB>caption`), or one caption per line linked to no image. Source tags are
    `<file stem>#<caption number of that image>`, or the file stem for unlinked captions.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidInputError(f"Cannot read captions file {path}: {error}.") from error
    csv_layout = bool(lines) and lines[0].strip().lower() == "image,caption"
    texts, images, sources = [], [], []
    per_image: dict[str, int] = {}
    for number, line in enumerate(lines[1:] if csv_layout else lines, start=2 if csv_layout else 1):
        if not line.strip():
            continue
        token = re.match(r"([^\t]+)#\d+\t(.*)", line)
        if csv_layout or token:
            image, sep, text = _csv_pair(line) if csv_layout or token is None else (token[1], "\t", token[2])
            if not sep or not image:
                raise InvalidInputError(f"{path} line {number} is not `image,caption`: {line[:80]!r}.")
            nth = per_image[image] = per_image.get(image, -1) + 1
            texts.append(text.strip())
            images.append(image)
            sources.append(f"{path.stem}#{nth}")
        else:
            texts.append(line.strip())
            images.append(None)
            sources.append(path.stem)
    return texts, images, sources


def _csv_pair(line: str) -> tuple[str, str, str]:
    """(image, ",", caption) of one `image,caption` line; quoted or not, commas in the caption kept."""
    fields = next(csv.reader([line]))
    if len(fields) < 2:
        return line, "", ""
    return fields[0], ",", ",".join(fields[1:])


# ----- file format -----

def _write(path: Path, attrs: dict[str, Any], contents: _Contents) -> None:
    """Write a complete store file: contiguous datasets, each in one call."""
    meta = attrs["model_meta"]
    with h5py.File(path, "w") as f:
        f.attrs["format_name"] = FORMAT_NAME
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["model_name"] = str(meta["name"])
        f.attrs["model_pretrained"] = str(meta["pretrained"])
        f.attrs["embed_dim"] = int(meta["embed_dim"])
        f.attrs["model_meta"] = json.dumps(meta, sort_keys=True)
        f.attrs["normalized"] = True
        f.attrs["dtype"] = attrs["dtype"]
        f.attrs["image_root"] = str(attrs["image_root"])
        f.attrs["image_root_relative"] = os.path.relpath(attrs["image_root"], path.parent)
        f.attrs["created"] = contents.created
        f.attrs["updated"] = contents.updated
        f.attrs["clipwidgets_version"] = __version__
        images = f.create_group("images")
        images.create_dataset("embeddings", data=contents.image_embeddings)
        images.create_dataset("paths", data=_strings(contents.paths), dtype=_STRING)
        images.create_dataset("size", data=contents.sizes)
        images.create_dataset("mtime_ns", data=contents.mtimes_ns)
        images.create_dataset("width", data=contents.widths)
        images.create_dataset("height", data=contents.heights)
        texts = f.create_group("texts")
        texts.create_dataset("embeddings", data=contents.text_embeddings)
        texts.create_dataset("text", data=_strings(contents.texts), dtype=_STRING)
        texts.create_dataset("image_index", data=contents.text_image_index)
        texts.create_dataset("source", data=_strings(contents.text_sources), dtype=_STRING)
        skipped = f.create_group("skipped")
        records = list(contents.skipped.values())
        skipped.create_dataset("path", data=_strings([r.path for r in records]), dtype=_STRING)
        skipped.create_dataset("reason", data=_strings([r.reason for r in records]), dtype=_STRING)
        skipped.create_dataset("size", data=_int64([r.size for r in records]))
        skipped.create_dataset("mtime_ns", data=_int64([r.mtime_ns for r in records]))
        subsets = f.create_group("subsets")
        for name, paths in contents.subsets.items():
            subsets.create_dataset(name, data=_strings(paths), dtype=_STRING)


_READ_ERRORS = (OSError, KeyError, ValueError, TypeError, RuntimeError)  # what h5py raises on bad files


def _open_checked(path: Path) -> h5py.File:
    """Open a store file for reading after checking it is an HDF5 clipwidgets store we can read."""
    try:
        f = h5py.File(path, "r", locking=False)
    except _READ_ERRORS as error:
        raise StoreError(f"{path} is not a readable HDF5 file (truncated, corrupt, or another format): "
                         f"{error}. It was left untouched.") from error
    try:
        name, version = f.attrs.get("format_name"), int(f.attrs.get("format_version", -1))
    except _READ_ERRORS as error:
        f.close()
        raise StoreError(f"{path} is an HDF5 file with unreadable attributes (corrupt): {error}. "
                         "It was left untouched.") from error
    if name != FORMAT_NAME:
        f.close()
        raise StoreError(f"{path} is an HDF5 file but not a clipwidgets store (no format_name "
                         f"{FORMAT_NAME!r}). It was left untouched; choose another store path.")
    if version > FORMAT_VERSION:
        f.close()
        raise StoreError(f"{path} has store format version {version}, newer than this clipwidgets "
                         f"{__version__} reads (up to {FORMAT_VERSION}). Upgrade clipwidgets.")
    return f


def _read(path: Path) -> tuple[dict[str, Any], _Contents]:
    """Read and check a whole store file; any problem becomes a StoreError naming the file."""
    with _open_checked(path) as f:
        try:
            attrs, contents = _read_contents(path, f, int(f.attrs["format_version"]))
        except _READ_ERRORS as error:
            raise StoreError(f"Store {path} is damaged ({type(error).__name__}: {error}). It was left "
                             "untouched; rebuild it with `clipwidgets index` into a new file.") from error
    _check_consistent(path, attrs, contents)
    return attrs, contents


def _read_contents(path: Path, f: h5py.File, version: int) -> tuple[dict[str, Any], _Contents]:
    meta = json.loads(_attr_str(f.attrs["model_meta"]))
    image_root = Path(_attr_str(f.attrs["image_root"]))
    relative = path.parent / _attr_str(f.attrs.get("image_root_relative", ""))
    if not image_root.is_dir() and f.attrs.get("image_root_relative") and relative.is_dir():
        image_root = relative.resolve()  # the store and its images were moved together
    attrs = {"model_meta": meta, "dtype": _attr_str(f.attrs["dtype"]), "image_root": image_root,
             "format_version": version, "clipwidgets_version": _attr_str(f.attrs["clipwidgets_version"])}
    images, texts, skipped = f["images"], f["texts"], f["skipped"]
    skip_paths = _read_strings(skipped["path"])
    records = zip(skip_paths, _read_strings(skipped["reason"]), skipped["size"][()].tolist(),
                  skipped["mtime_ns"][()].tolist(), strict=True)
    contents = _Contents(
        paths=_read_strings(images["paths"]),
        image_embeddings=_read_array(images["embeddings"]),
        sizes=_int64(images["size"][()]), mtimes_ns=_int64(images["mtime_ns"][()]),
        widths=_int32(images["width"][()]), heights=_int32(images["height"][()]),
        texts=_read_strings(texts["text"]), text_embeddings=_read_array(texts["embeddings"]),
        text_image_index=_int64(texts["image_index"][()]), text_sources=_read_strings(texts["source"]),
        skipped={p: SkippedFile(p, r, int(s), int(m)) for p, r, s, m in records},
        subsets={name: _read_strings(ds) for name, ds in f["subsets"].items()},
        created=_attr_str(f.attrs["created"]), updated=_attr_str(f.attrs["updated"]))
    return attrs, contents


def _check_consistent(path: Path, attrs: dict[str, Any], c: _Contents) -> None:
    dim = int(attrs["model_meta"]["embed_dim"])
    problems = []
    if attrs["dtype"] not in DTYPES:
        problems.append(f"unknown dtype {attrs['dtype']!r}")
    if c.image_embeddings.shape != (len(c.paths), dim):
        problems.append(f"images/embeddings has shape {c.image_embeddings.shape}, expected "
                        f"({len(c.paths)}, {dim})")
    if any(len(column) != len(c.paths) for column in (c.sizes, c.mtimes_ns, c.widths, c.heights)):
        problems.append("image columns of different lengths")
    if c.text_embeddings.shape != (len(c.texts), dim) or not (
            len(c.text_image_index) == len(c.text_sources) == len(c.texts)):
        problems.append("text columns of different lengths")
    elif len(c.texts) and (c.text_image_index.min() < -1 or c.text_image_index.max() >= len(c.paths)):
        problems.append("texts linked to images that do not exist")
    if problems:
        raise StoreError(f"Store {path} is damaged: {'; '.join(problems)}. It was left untouched; rebuild "
                         "it with `clipwidgets index` into a new file.")


def _read_array(dataset: h5py.Dataset) -> np.ndarray:
    out = np.empty(dataset.shape, dataset.dtype)
    if out.size:
        dataset.read_direct(out)
    return out


def _read_strings(dataset: h5py.Dataset) -> list[str]:
    """A UTF-8 string dataset as a list of str (raw bytes decoded here: 3x faster than .asstr())."""
    if dataset.shape[0] == 0:
        return []
    return [raw.decode("utf-8") for raw in dataset[()].tolist()]


def _strings(values: Sequence[str]) -> np.ndarray:
    return np.array(values, dtype=object) if len(values) else np.array([], dtype=object)


def _attr_str(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


# ----- small helpers -----

def _relative_to(path: str, root: Path) -> str:
    """`path` relative to `root` (which is resolved); "../..." when it lies outside.

    The folders on the way are resolved too when needed (e.g. /tmp -> /private/tmp), but not the
    file itself, so a symlinked image keeps its own name.
    """
    candidates = [os.path.normpath(path)]
    folder, name = os.path.split(candidates[0])
    candidates.append(os.path.join(os.path.realpath(folder), name))
    relative = ""
    for candidate in candidates:
        try:
            relative = os.path.relpath(candidate, root)
        except ValueError:  # another drive on Windows
            relative = os.pardir
        if not relative.startswith(os.pardir):
            break
    return relative


def _check_model_meta(model_meta: Mapping[str, Any]) -> None:
    missing = [key for key in _MODEL_KEYS if key not in model_meta]
    if missing:
        raise InvalidInputError(f"model_meta lacks {', '.join(missing)}; pass encoder.meta.")
    dim = model_meta["embed_dim"]
    if not isinstance(dim, (int, np.integer)) or dim <= 0:
        raise InvalidInputError(f"model_meta embed_dim must be a positive integer, got {dim!r}.")


def _model_key(meta: Mapping[str, Any], key: str) -> Any:
    return int(meta[key]) if key == "embed_dim" else str(meta[key])


def _model_label(meta: Mapping[str, Any]) -> str:
    return f"{meta['name']}/{meta['pretrained']}"


def _replace_and_append(column: np.ndarray, existing: np.ndarray, values: np.ndarray) -> np.ndarray:
    """A new array: rows `existing >= 0` overwritten in place, the others appended in order."""
    replace = existing >= 0
    if not replace.any():
        return np.concatenate([column, values])
    out = np.concatenate([column, values[~replace]])
    out[existing[replace]] = values[replace]
    return out


def _finite_and_norms(rows: np.ndarray, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Per row: all values finite, and the L2 norm; in float32 chunks, so memory stays small."""
    finite = np.empty(len(rows), dtype=bool)
    norms = np.empty(len(rows), dtype=np.float32)
    for start in range(0, len(rows), chunk):
        block = rows[start:start + chunk].astype(np.float32)
        finite[start:start + chunk] = np.isfinite(block).all(axis=1)
        norms[start:start + chunk] = np.sqrt(np.einsum("ij,ij->i", block, block))
    return finite, norms


def _normalised(rows: np.ndarray, labels: Sequence[str], source: Any) -> np.ndarray:
    """Rows divided by their L2 norm (float32); refuses zero, NaN and inf rows naming the first."""
    finite, norms = _finite_and_norms(rows)
    bad = np.flatnonzero(~finite | (norms == 0))
    if bad.size:
        raise InvalidInputError(f"Row {bad[0]} of {source} ({labels[bad[0]]}) is zero, NaN or inf; "
                                "it cannot be normalised. Re-index the folder instead.")
    return (rows / norms[:, None]).astype(np.float32)


def _load_npy(path: str | os.PathLike[str]) -> np.ndarray:
    try:
        rows = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise InvalidInputError(f"Cannot read embeddings file {path}: {error}.") from error
    if rows.ndim != 2 or not np.issubdtype(rows.dtype, np.floating):
        raise InvalidInputError(f"{path} holds a {rows.dtype} array of shape {rows.shape}; expected "
                                "a 2-d float array (rows x embedding dim).")
    return rows


def _text_rows(npy: str | os.PathLike[str] | None,
               texts: Sequence[str] | None) -> tuple[np.ndarray | None, list[str]]:
    if npy is None:
        if texts is not None:
            raise InvalidInputError("Texts were given without their embeddings (text_embeddings_npy).")
        return None, []
    rows = _load_npy(npy)
    if texts is None:
        raise InvalidInputError(f"{npy} needs the texts its rows embed (one caption per row).")
    if len(rows) != len(texts):
        raise InvalidInputError(f"{npy} has {len(rows)} rows but {len(texts)} texts were given: "
                                "they are out of step. Give the captions file the embeddings were made from.")
    return rows, list(texts)


def _file_record(path: Path) -> tuple[int, int, int, int]:
    """(size, mtime_ns, width, height) of an image file; width and height are -1 when unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        stat = path.stat()
    except OSError as error:
        raise InvalidInputError(f"Image {path} listed for import cannot be read: {error}.") from error
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError):
        width = height = -1
    return stat.st_size, stat.st_mtime_ns, width, height


def _int64(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=np.int64).reshape(-1)


def _int32(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=np.int32).reshape(-1)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY if path.is_dir() else os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _lock(path: Path) -> int:
    """Take the writer lock (`<path>.lock`) without waiting; StoreError when another process holds it."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise StoreError(f"Cannot open the lock file {lock_path} of store {path}: {error}. "
                         "The folder must be writable to change the store.") from error
    try:
        if sys.platform == "win32":
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        else:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except (BlockingIOError, PermissionError):
        os.close(fd)
        raise StoreError(f"Another process is writing to {path} (it holds {lock_path}). Wait for it to "
                         "finish, or open the store read-only with mode='r'.") from None
    return fd


def _unlock(fd: int | None) -> None:
    if fd is not None:
        if sys.platform == "win32":
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _remove_stale_temp_files(path: Path) -> None:
    """Delete temp files a killed writer left (only our exact name pattern; the caller holds the lock)."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.tmp-\d+-[0-9a-f]+")
    for candidate in path.parent.glob(f".{path.name}.tmp-*"):
        if pattern.fullmatch(candidate.name):
            with contextlib.suppress(OSError):
                candidate.unlink()

