"""Snapshot: one committed (or pending) state of a store, and the mapping between its numberings.

Images have three numbers: the stable id (never reused, texts link by it), the position (segment,
local row), and the public row (0..num_images-1 over the live images in insertion order). Deleted
images are tombstones: their ids in `dead`. Everything here works on arrays, so a 10M-row store needs
no per-row Python objects.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .segments import Segment, path_hashes
from .texts import Texts

__all__ = ["SkippedFile", "Snapshot"]


@dataclass(frozen=True)
class SkippedFile:
    """A file the indexer could not embed, remembered so an unchanged one is not retried."""

    path: str
    reason: str
    size: int
    mtime_ns: int


@dataclass
class _Layout:
    dead_local: list[np.ndarray]  # per segment: sorted local rows of tombstoned images
    row_starts: np.ndarray  # (segments + 1,) public row of each segment's first live image
    first_ids: np.ndarray  # (segments,) id of each segment's first row


@dataclass
class Snapshot:
    """Segments, tombstones, texts, skipped files and subsets; edits make new snapshots."""

    segments: tuple[Segment, ...]
    dead: np.ndarray  # sorted unique int64 ids of deleted images
    next_id: int
    texts: Texts
    skipped: dict[str, SkippedFile]
    subsets: dict[str, tuple[str, ...]]
    created: str
    updated: str
    merge_credit: int = 0  # bytes of merges above the inline budget that commits have earned (merge.py)
    _layout: _Layout | None = dataclasses.field(default=None, repr=False, compare=False)
    _captions: tuple[np.ndarray, np.ndarray] | None = dataclasses.field(default=None, repr=False,
                                                                          compare=False)

    def edited(self, **changes: Any) -> Snapshot:
        """A copy with `changes`; derived tables are rebuilt on demand."""
        return dataclasses.replace(self, _layout=None, _captions=None, **changes)

    def files(self) -> dict[str, Any]:
        """The mapped segments and the text file by file name (what a refresh can reuse)."""
        named: dict[str, Any] = {s.name: s for s in self.segments if s.name}
        if self.texts.name:
            named[self.texts.name] = self.texts
        return named

    @property
    def layout(self) -> _Layout:
        if self._layout is None:
            dead_local, live = [], [0]
            for segment in self.segments:
                if len(segment) and len(self.dead):
                    lo = np.searchsorted(self.dead, segment.ids[0], side="left")
                    hi = np.searchsorted(self.dead, segment.ids[-1], side="right")
                    candidates = self.dead[lo:hi]
                    local = np.searchsorted(segment.ids, candidates)
                    inside = local < len(segment)
                    local = local[inside][np.asarray(segment.ids[local[inside]]) == candidates[inside]]
                else:
                    local = np.zeros(0, np.int64)
                dead_local.append(local.astype(np.int64))
                live.append(live[-1] + len(segment) - len(local))
            first = np.array([int(s.ids[0]) if len(s) else 0 for s in self.segments], np.int64)
            self._layout = _Layout(dead_local, np.array(live, np.int64), first)
        return self._layout

    def sizes(self) -> tuple[list[int], list[int], list[int]]:
        """(live rows, rows, file bytes) of each segment: what the merge policy looks at."""
        dead = self.layout.dead_local
        return ([len(s) - len(d) for s, d in zip(self.segments, dead, strict=True)],
                [len(s) for s in self.segments], [s.file_bytes for s in self.segments])

    @property
    def num_images(self) -> int:
        return int(self.layout.row_starts[-1])

    def locate_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(segment number, local row) of public rows (all in range)."""
        layout = self.layout
        seg = np.searchsorted(layout.row_starts, rows, side="right") - 1
        local = np.empty(len(rows), np.int64)
        for k in np.unique(seg).tolist():
            mine = seg == k
            nth = rows[mine] - layout.row_starts[k]
            dead = layout.dead_local[k]
            local[mine] = nth + np.searchsorted(dead - np.arange(len(dead)), nth, side="right")
        return seg, local

    def rows_in_segment(self, k: int, local: np.ndarray) -> np.ndarray:
        """Public rows of local rows of segment k; -1 where tombstoned."""
        dead = self.layout.dead_local[k]
        start = self.layout.row_starts[k]
        if not len(dead):
            return start + np.asarray(local, np.int64)
        before = np.searchsorted(dead, local, side="left")
        is_dead = (before < len(dead)) & (dead[np.minimum(before, len(dead) - 1)] == local)
        return np.where(is_dead, -1, start + local - before)

    def block_rows(self, k: int) -> np.ndarray:
        """The public row of every local row of segment k (-1: tombstoned), for search."""
        return self.rows_in_segment(k, np.arange(len(self.segments[k]), dtype=np.int64))

    def live_locals(self, k: int) -> np.ndarray:
        keep = np.ones(len(self.segments[k]), bool)
        keep[self.layout.dead_local[k]] = False
        return np.flatnonzero(keep)

    def locate_ids(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(segment number, local row) of image ids; (-1, -1) for ids no segment holds."""
        ids = np.asarray(ids, np.int64)
        seg = np.searchsorted(self.layout.first_ids, ids, side="right") - 1
        local = np.full(len(ids), -1, np.int64)
        for k in np.unique(seg[seg >= 0]).tolist():
            mine = seg == k
            found = np.searchsorted(self.segments[k].ids, ids[mine])
            inside = found < len(self.segments[k])
            ok = np.zeros(len(found), bool)
            ok[inside] = np.asarray(self.segments[k].ids[found[inside]]) == ids[mine][inside]
            local[np.flatnonzero(mine)[ok]] = found[ok]
        seg[local < 0] = -1
        return seg, local

    def rows_of_ids(self, ids: np.ndarray) -> np.ndarray:
        """Public rows of image ids; -1 for deleted or unknown ids."""
        seg, local = self.locate_ids(ids)
        rows = np.full(len(seg), -1, np.int64)
        for k in np.unique(seg[seg >= 0]).tolist():
            mine = seg == k
            rows[mine] = self.rows_in_segment(k, local[mine])
        return rows

    def ids_of_rows(self, rows: np.ndarray) -> np.ndarray:
        seg, local = self.locate_rows(np.asarray(rows, np.int64))
        out = np.empty(len(rows), np.int64)
        for k in np.unique(seg).tolist():
            mine = seg == k
            out[mine] = np.asarray(self.segments[k].ids[local[mine]])
        return out

    def find_paths(self, paths: Sequence[str], hashes: np.ndarray | None = None) -> np.ndarray:
        """Public row of each path (-1: not stored), by the segments' hash index (`hashes`: the
        paths' `path_hashes`, when the caller has them)."""
        rows = np.full(len(paths), -1, np.int64)
        if not len(paths) or not self.segments:
            return rows
        hashes = path_hashes(paths) if hashes is None else hashes
        for k, segment in enumerate(self.segments):
            queries, local = segment.find(hashes)
            if not len(queries):
                continue
            found = self.rows_in_segment(k, local)
            for query, one_local, row in zip(queries.tolist(), local.tolist(), found.tolist(), strict=True):
                if row >= 0 and segment.path(one_local) == paths[query]:
                    rows[query] = row
        return rows

    def captions_order(self) -> tuple[np.ndarray, np.ndarray]:
        """(text numbers sorted by linked row, those rows): the captions of a row by bisection."""
        if self._captions is None:
            rows = self.text_rows()
            order = np.argsort(rows, kind="stable")
            self._captions = (order, rows[order])
        return self._captions

    def text_rows(self) -> np.ndarray:
        """The public row each text links to (-1: none)."""
        ids = self.texts.image_id
        rows = np.full(len(ids), -1, np.int64)
        linked = ids >= 0
        if linked.any():
            rows[linked] = self.rows_of_ids(ids[linked])
        return rows
