"""Committer: collects what an indexing run produced and commits it to the store in batches."""

from __future__ import annotations

import time

import numpy as np

from .store import EmbeddingStore, SkippedFile

__all__ = ["COMMIT_OVERHEAD", "Committer", "MAX_PENDING"]

COMMIT_OVERHEAD = 0.1  # commit when the time since the last one is >= 1/COMMIT_OVERHEAD x its duration
MAX_PENDING = 4096  # ... or when this many files wait, whatever the overhead


class Committer:
    """Collects encoded images and skipped files; commits them on an adaptive cadence.

    A commit rewrites the whole store, so it costs time proportional to the store's size. It happens
    once at least `batch_size` files are pending and the time since the last commit is at least 10x
    that commit's duration (commits take <= ~10% of the run), or once MAX_PENDING files are pending.
    """

    def __init__(self, store: EmbeddingStore, found: dict[str, tuple[int, int]], batch_size: int) -> None:
        self.store = store
        self.found = found
        self.batch_size = batch_size
        self.paths: list[str] = []
        self.embeddings: list[np.ndarray] = []
        self.widths: list[int] = []
        self.heights: list[int] = []
        self.pending_skipped: list[SkippedFile] = []
        self.skipped: list[SkippedFile] = []
        self.images_committed = 0
        self.last_commit_end = time.perf_counter()
        self.last_commit_seconds = 0.0

    @property
    def pending(self) -> int:
        return len(self.paths) + len(self.pending_skipped)

    def add_images(self, paths: list[str], embeddings: np.ndarray, sizes: list[tuple[int, int]]) -> None:
        self.paths.extend(paths)
        self.embeddings.append(np.asarray(embeddings, dtype=np.float32))
        self.widths.extend(width for width, _ in sizes)
        self.heights.extend(height for _, height in sizes)
        self._maybe_commit()

    def add_skipped(self, relpath: str, reason: str) -> None:
        size, mtime_ns = self.found[relpath]
        record = SkippedFile(relpath, reason, size, mtime_ns)
        self.pending_skipped.append(record)
        self.skipped.append(record)
        self._maybe_commit()

    def _maybe_commit(self) -> None:
        if self.pending < self.batch_size:
            return
        since_last = time.perf_counter() - self.last_commit_end
        if since_last * COMMIT_OVERHEAD >= self.last_commit_seconds or self.pending >= MAX_PENDING:
            self.commit()

    def commit(self) -> None:
        """Write everything pending to the store in one atomic commit."""
        if not self.pending:
            return
        started = time.perf_counter()
        with self.store.batch():
            if self.paths:
                stamps = [self.found[path] for path in self.paths]
                self.store.add_images(self.paths, np.concatenate(self.embeddings),
                                      sizes=[size for size, _ in stamps],
                                      mtimes_ns=[mtime for _, mtime in stamps],
                                      widths=self.widths, heights=self.heights)
            if self.pending_skipped:  # a changed file that no longer decodes loses its old row
                self.store.remove([record.path for record in self.pending_skipped])
                self.store.add_skipped(self.pending_skipped)
        self.images_committed += len(self.paths)
        self.paths, self.embeddings, self.widths, self.heights, self.pending_skipped = [], [], [], [], []
        self.last_commit_end = time.perf_counter()
        self.last_commit_seconds = self.last_commit_end - started
