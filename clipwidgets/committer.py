"""Committer: collects what an indexing run produced and commits it to the store every few seconds."""

from __future__ import annotations

import time

import numpy as np

from .decode_workers import is_transient
from .store import EmbeddingStore, SkippedFile

__all__ = ["COMMIT_EVERY_S", "MAX_PENDING", "Committer"]

COMMIT_EVERY_S = 2.0  # commit once this long has passed since the last commit (or the run's start)
MAX_PENDING = 4096  # ... or once this many files wait, whatever the time
_clock = time.monotonic


class Committer:
    """Collects encoded images and skipped files; commits them on a fixed time budget.

    A commit happens when files are pending and `commit_every_s` seconds have passed since the last
    one (or since the Committer was made), or once MAX_PENDING files are pending; the caller commits
    the rest at the end, on Ctrl-C and on errors (`commit()`). A crash thus loses seconds of work.
    A segmented store's commit costs the batch, not the collection, so a short budget is cheap.

    Skipped files with a transient failure (`decode_workers.is_transient`: missing, unreadable, a
    decoder crash or hang) are listed in `skipped` but not recorded in the store, so that the next
    run retries them; an image row they had is kept.
    """

    def __init__(self, store: EmbeddingStore, found: dict[str, tuple[int, int]], batch_size: int, *,
                 commit_every_s: float = COMMIT_EVERY_S) -> None:
        self.store = store
        self.found = found
        self.batch_size = batch_size  # kept for callers; the cadence is the time budget
        self.commit_every_s = commit_every_s
        self.paths: list[str] = []
        self.embeddings: list[np.ndarray] = []
        self.widths: list[int] = []
        self.heights: list[int] = []
        self.pending_skipped: list[SkippedFile] = []
        self.skipped: list[SkippedFile] = []
        self.images_committed = 0
        self.commits = 0
        self.last_commit_end = _clock()

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
        self.skipped.append(record)
        if not is_transient(reason):
            self.pending_skipped.append(record)
        self._maybe_commit()

    def _maybe_commit(self) -> None:
        if self.pending >= MAX_PENDING or (self.pending and
                                           _clock() - self.last_commit_end >= self.commit_every_s):
            self.commit()

    def commit(self) -> None:
        """Write everything pending to the store in one atomic commit."""
        if not self.pending:
            return
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
        self.commits += 1
        self.paths, self.embeddings, self.widths, self.heights, self.pending_skipped = [], [], [], [], []
        self.last_commit_end = _clock()
