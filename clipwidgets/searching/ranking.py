"""A page of one query's ranking: min_score, the adaptive cutoff, near-duplicate collapsing, paging.

`rank_page(ranking, options, vectors)` applies SearchOptions to a lazy ranking (an exact `Scan`, or an
index's `top` for one query) and returns the page's rows and scores plus `total`, the number of
results available for paging.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .index import NOTHING
from .options import SearchOptions
from .results import ADAPTIVE_WINDOW, adaptive_cutoff

__all__ = ["Ranked", "Ranking", "collapse", "greedy_distinct", "rank_page"]

Ranked = Callable[[int], tuple[np.ndarray, np.ndarray]]


class Ranking:
    """The ranking of one query by a vector index, fetched lazily to the depth asked for.

    With an exact `scan` (index.Scan), its fast pass is reused for every depth and for exact
    `min_score` counts; otherwise `index.top(query, depth, mask)` is called again for deeper ranks.
    """

    def __init__(self, index: Any, query: np.ndarray, mask: np.ndarray | None, *, scan: Any = None) -> None:
        self.index, self.query, self.mask, self.scan = index, query, mask, scan
        self._best = NOTHING

    def top(self, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows and float64 scores of the best `depth` allowed rows, best first."""
        if self.scan is not None:
            return self.scan.top(depth)
        if depth > len(self._best[0]):
            self._best = self.index.top(self.query, depth, self.mask)
        return self._best[0][:depth], self._best[1][:depth]

    def count_at_least(self, threshold: float) -> int | None:
        """How many allowed rows score >= threshold, or None when only a full scan could tell."""
        return None if self.scan is None else self.scan.count_at_least(threshold)


def rank_page(ranking: Ranking, options: SearchOptions, total: int,
              vectors: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray, int]:
    """(rows, scores, total) of the page `options` asks for. `total` comes in as the number of rows
    passing the filters; `vectors(rows)` gives stored vectors for near-duplicate collapsing."""
    min_score = options.min_score
    if min_score is not None:
        counted = ranking.count_at_least(min_score)
        total = total if counted is None else counted
    cut = adaptive_cutoff(ranking.top(ADAPTIVE_WINDOW)[1]) if options.adaptive else None
    if cut is not None:
        total = min(total, cut)

    def ranked(depth: int) -> tuple[np.ndarray, np.ndarray]:
        rows, values = ranking.top(depth if cut is None else min(depth, cut))
        if min_score is not None:
            count = int(np.searchsorted(-values, -min_score, side="right"))
            rows, values = rows[:count], values[:count]
        return rows, values

    need = options.offset + options.k
    rows, values = ranked(need)
    threshold = options.dedup_threshold
    if threshold is not None:
        rows, values = collapse(ranked, vectors, rows, values, need, threshold)
    return rows[options.offset:need], values[options.offset:need], total


def collapse(ranked: Ranked, vectors: Callable[[np.ndarray], np.ndarray], rows: np.ndarray,
             values: np.ndarray, need: int, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Greedy near-duplicate removal over the ranking `ranked(depth)`, fetching deeper ranks until
    `need` distinct hits remain or the ranking is exhausted."""
    depth = len(rows)
    while True:
        keep = greedy_distinct(vectors(rows).astype(np.float32), threshold)
        if len(keep) >= need or len(rows) < depth:
            return rows[keep], values[keep]
        depth *= 4
        rows, values = ranked(depth)


def greedy_distinct(vectors: np.ndarray, threshold: float) -> list[int]:
    """Positions kept when walking `vectors` in order and dropping those with cosine >= threshold to a
    kept one."""
    kept: list[int] = []
    for i, vector in enumerate(vectors):
        if not kept or float(np.max(vectors[kept] @ vector)) < threshold:
            kept.append(i)
    return kept
