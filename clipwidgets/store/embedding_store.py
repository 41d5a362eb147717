"""EmbeddingStore: image and text embeddings of one collection, crash-safe, memory-mapped.

A writer (mode "a") keeps its edits in a pending snapshot and commits them as new segment files plus
an atomically replaced manifest (files.py). Readers (mode "r") map the segments of the manifest they
opened; `refresh()` maps the segments a writer added since.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError, StoreError
from . import merge as merge_policy
from .atomic import lock, remove_temp_files, signature, unlock
from .files import commit, failure_message, read_store, remove_unlisted, without_lost_texts
from .format import DTYPES, FORMAT_VERSION, check_model_meta, model_label, open_checked
from .manifest import segments_folder
from .segments import Segment, path_hashes
from .snapshot import SkippedFile, Snapshot
from .texts import Texts
from .validation import relative_path, relative_paths, validated_embeddings
from .view import StoreView

__all__ = ["EmbeddingStore"]


def _now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class EmbeddingStore(StoreView):
    """Image and text embeddings of one collection, with the model and files they came from."""

    def __init__(self, path: Path, mode: str, attrs: dict[str, Any], snapshot: Snapshot, *,
                 signature: tuple[int, int, int] | None, lock_fd: int | None = None) -> None:
        self.path = path
        self.mode = mode
        self._attrs = attrs
        self._snapshot = snapshot
        self._pending: Snapshot | None = None
        self._lock_fd = lock_fd
        self._signature = signature  # of the manifest as it was just before it was read
        self.closed = False
        self.dropped: list[str] = []  # segment and text files left out by open(drop_missing=True)

    # ----- opening and closing -----

    @classmethod
    def create(cls, path: str | os.PathLike[str], model_meta: dict[str, Any],
               image_root: str | os.PathLike[str], *, dtype: str = "float16") -> EmbeddingStore:
        """Create a new, empty store at `path` and open it for writing; refuses an existing path."""
        path = Path(path).absolute()
        check_model_meta(model_meta)
        if dtype not in DTYPES:
            raise InvalidInputError(f"Unknown store dtype {dtype!r}: use one of {', '.join(DTYPES)}.")
        folder = segments_folder(path)
        if path.exists():
            raise StoreError(f"{path} already exists; open it with EmbeddingStore.open(path, mode='a') "
                             "or choose another file name. Nothing was changed.")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreError(f"Cannot create the folder for store {path}: {error}.") from error
        lock_fd = lock(path)
        try:
            if path.exists():
                raise StoreError(f"{path} was created by another process just now; open it instead.")
            remove_temp_files(path.parent, path.name)  # from a create that was killed before its first commit
            attrs = {"model_meta": dict(model_meta), "dtype": dtype,
                     "image_root": Path(image_root).expanduser().resolve(), "format_version": FORMAT_VERSION}
            now = _now()
            dim = int(model_meta["embed_dim"])
            snap = Snapshot((), np.zeros(0, np.int64), 0, Texts.empty(dim, dtype), {}, {}, now, now)
            store = cls(path, "a", attrs, snap, signature=None, lock_fd=lock_fd)
            if folder.is_dir():  # left by a deleted store of this name: no manifest lists its files
                remove_unlisted(folder, snap)
            store._commit(snap)
        except BaseException:
            unlock(lock_fd)
            raise
        return store

    @classmethod
    def open(cls, path: str | os.PathLike[str], mode: str = "r", *, drop_missing: bool = False,
             ) -> EmbeddingStore:
        """Open an existing store: mode "r" reads (memory-mapped), mode "a" also writes (one writer).

        `drop_missing=True` (mode "a" only) is the explicit recovery from lost segment files: they are
        left out, with their images and those images' texts, from the next commit.
        """
        if mode not in ("r", "a"):
            raise InvalidInputError(f"Unknown store mode {mode!r}: use 'r' to read or 'a' to write.")
        if drop_missing and mode != "a":
            raise InvalidInputError("drop_missing=True changes the store: open it with mode='a'.")
        path = Path(path).absolute()
        if path.is_dir():
            raise StoreError(f"{path} is a folder; give the path of a store file such as "
                             f"{path / 'photos.h5'}.")
        if not path.is_file():
            raise StoreError(f"Store {path} does not exist. Build it with `clipwidgets index` "
                             "or EmbeddingStore.create().")
        lock_fd = None
        if mode == "a":
            open_checked(path).close()  # refuse a foreign or newer file before creating its lock file
            lock_fd = lock(path)
        try:
            dropped: list[str] | None = [] if drop_missing else None
            attrs, snap, sig = read_store(path, dropped=dropped)
            store = cls(path, mode, attrs, snap, signature=sig, lock_fd=lock_fd)
            if mode == "a":
                remove_temp_files(path.parent, path.name)
                if segments_folder(path).is_dir() and attrs["format_version"] >= 2 and not dropped:
                    remove_unlisted(segments_folder(path), snap)
            store.dropped = list(dropped or [])
            return store
        except BaseException:
            unlock(lock_fd)
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
        unlock(self._lock_fd)
        self._lock_fd = None
        self.closed = True

    def __enter__(self) -> EmbeddingStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"EmbeddingStore({str(self.path)!r}, mode={self.mode!r}, images={self.num_images}, "
                f"texts={self.num_texts}, model={model_label(self.model_meta)!r})")

    def refresh(self) -> bool:
        """Read what another process committed since; True when something changed.

        Segments already mapped are reused: only new segments are mapped.
        """
        if self.mode == "a":
            return False
        current = signature(self.path)
        if current is None:
            raise StoreError(f"Store {self.path} has disappeared; the data loaded earlier is still usable.")
        if current == self._signature:
            return False
        self._attrs, self._snapshot, self._signature = read_store(self.path, reuse=self._snapshot.files())
        return True

    @property
    def _view(self) -> Snapshot:
        """What reads see: the pending batch of a writer, else the committed snapshot."""
        return self._pending if self._pending is not None else self._snapshot

    # ----- writing -----

    @contextlib.contextmanager
    def batch(self) -> Iterator[EmbeddingStore]:
        """Group several edits into one commit at the end of the block; nothing is committed if it raises."""
        self._require_writer()
        if self._pending is not None:  # nested: the outermost batch commits
            yield self
            return
        self._pending = self._snapshot
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
        """Append images; a path already in the store is replaced: its old row becomes a tombstone and
        the new one goes to the end (its texts follow it)."""
        self._require_writer()
        relpaths = relative_paths(paths, self.image_root)
        count = len(relpaths)
        rows = self._validated_embeddings(embeddings, count, lambda i: f"image {relpaths[i]!r}", "image")
        columns = {}
        for name, values, dtype in (("size", sizes, np.int64), ("mtime_ns", mtimes_ns, np.int64),
                                    ("width", widths, np.int32), ("height", heights, np.int32)):
            column = np.asarray(values, dtype=dtype).reshape(-1)
            if column.shape != (count,):
                raise InvalidInputError(f"add_images got {count} paths but {len(column)} {name}s.")
            columns[name] = column
        with self.batch():
            snap = self._view
            hashes = path_hashes(relpaths)
            existing = snap.find_paths(relpaths, hashes)
            replaced = existing >= 0
            old_ids = snap.ids_of_rows(existing[replaced])
            new_ids = np.arange(snap.next_id, snap.next_id + count, dtype=np.int64)
            segment = Segment.in_memory(new_ids, relpaths, rows, columns, hashes)
            names = set(relpaths)
            self._pending = snap.edited(
                segments=(*snap.segments, segment) if count else snap.segments,
                dead=np.union1d(snap.dead, old_ids), next_id=snap.next_id + count,
                texts=snap.texts.relinked(old_ids, new_ids[replaced]),
                skipped={p: r for p, r in snap.skipped.items() if p not in names})

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
        links = np.asarray([-1] * count if image_index is None else image_index, dtype=np.int64).reshape(-1)
        tags = [""] * count if sources is None else [str(tag) for tag in sources]
        if links.shape != (count,) or len(tags) != count:
            raise InvalidInputError(f"add_texts got {count} texts, {len(links)} image indices "
                                    f"and {len(tags)} sources; give one of each per text.")
        with self.batch():
            snap = self._view
            bad = np.flatnonzero((links < -1) | (links >= snap.num_images))
            if bad.size:
                raise InvalidInputError(f"{label(int(bad[0]))} links to image {links[bad[0]]}, but the "
                                        f"store has {snap.num_images} images (use -1 for no image).")
            ids = np.full(count, -1, np.int64)
            ids[links >= 0] = snap.ids_of_rows(links[links >= 0])
            self._pending = snap.edited(texts=snap.texts.appended(list(texts), rows, ids, tags))

    def add_skipped(self, records: Sequence[SkippedFile]) -> None:
        """Remember files that could not be embedded; replaces an earlier record of the same path."""
        self._require_writer()
        checked = [dataclasses.replace(r, path=relative_path(r.path, self.image_root), reason=str(r.reason),
                                       size=int(r.size), mtime_ns=int(r.mtime_ns)) for r in records]
        with self.batch():
            snap = self._view
            self._pending = snap.edited(skipped={**snap.skipped, **{r.path: r for r in checked}})

    def remove(self, paths: Sequence[str | os.PathLike[str]]) -> int:
        """Remove images (as tombstones, with their linked texts) and skip records; returns the images
        removed. Paths that are in neither are ignored. The other rows keep their order."""
        self._require_writer()
        relpaths = list(dict.fromkeys(relative_paths(paths, self.image_root, allow_duplicates=True)))
        with self.batch():
            snap = self._view
            rows = snap.find_paths(relpaths)
            ids = snap.ids_of_rows(rows[rows >= 0])
            names = set(relpaths)
            texts = snap.texts
            gone = np.isin(texts.image_id, ids)
            self._pending = snap.edited(dead=np.union1d(snap.dead, ids),
                                        texts=texts.kept(~gone) if gone.any() else texts,
                                        skipped={p: r for p, r in snap.skipped.items() if p not in names})
            return len(ids)

    def set_subset(self, name: str, paths: Sequence[str | os.PathLike[str]]) -> None:
        """Store a named subset (e.g. a dataset split) of images already in the store."""
        self._require_writer()
        if not name or "/" in name or name in (".", ".."):
            raise InvalidInputError(f"Subset name {name!r} must be non-empty and contain no '/'.")
        relpaths = relative_paths(paths, self.image_root)
        with self.batch():
            snap = self._view
            found = snap.find_paths(relpaths).tolist()
            missing = [p for p, row in zip(relpaths, found, strict=True) if row < 0]
            if missing:
                raise InvalidInputError(f"Subset {name!r}: {missing[0]!r} is not in store {self.path} "
                                        f"({len(missing)} of {len(relpaths)} paths missing); add the "
                                        "images first.")
            self._pending = snap.edited(subsets={**snap.subsets, name: tuple(relpaths)})

    def compact(self, *, full: bool = False) -> None:
        """Merge segments now, whatever they cost (`full`: into one segment); one crash-safe commit."""
        self._require_writer()
        if self._pending is not None:
            raise StoreError(f"Cannot compact {self.path} inside a batch(); leave the `with` block first.")
        snap = self._snapshot
        if self.dropped:  # texts of images whose segment was dropped go with them
            snap = without_lost_texts(snap)
        self._commit(snap, merge_budget=float("inf"), merge_all=full)
        self.dropped = []

    # ----- internals -----

    def _require_writer(self) -> None:
        if self.closed:
            raise StoreError(f"Store {self.path} is closed; open it again with mode='a' to change it.")
        if self.mode != "a":
            raise StoreError(f"Store {self.path} is open read-only; open it with mode='a' to change it.")

    def _validated_embeddings(self, embeddings: np.ndarray, count: int, label: Callable[[int], str],
                              kind: str) -> np.ndarray:
        return validated_embeddings(embeddings, count, label, kind=kind, meta=self._attrs["model_meta"],
                                    dtype=self.dtype, store_path=self.path)

    def _commit(self, snap: Snapshot, *, merge_budget: float | None = None, merge_all: bool = False) -> None:
        """Write `snap` (files.commit; merges inline up to `merge_budget` bytes, default
        merge.INLINE_MERGE_BYTES, and what credit pays for); keep it as the committed snapshot on success."""
        if merge_budget is None:
            merge_budget = merge_policy.INLINE_MERGE_BYTES
        snap = snap.edited(updated=_now())
        try:
            committed = commit(self.path, self._attrs, snap, merge_budget=merge_budget, merge_all=merge_all)
        except (OSError, RuntimeError) as error:  # h5py reports failed writes as either
            raise StoreError(failure_message(self.path, error, self._snapshot.num_images)) from error
        self._attrs["format_version"] = FORMAT_VERSION
        self._snapshot = committed
        self._signature = signature(self.path)
