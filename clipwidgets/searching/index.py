"""Vector indexes: `top(query, depth, mask) -> (rows, scores)`, the best `depth` allowed store rows,
best first, with float64 scores from the stored values (ties: lower row first).

- `ExactIndex` scans every row with a fast kernel (kernels.py) and re-scores in float64 the candidates
  that can still reach the requested ranks given a bound on the kernel's error: its rankings equal a
  float64 reference ranking of the stored vectors.
- `ApproximateIndex` asks a faiss index (clipwidgets.ann) for candidates, re-scores them exactly, and
  falls back to the exact index when filters leave too few.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from .fast import FastScores
from .scorers import ImageScorer

__all__ = ["NOTHING", "ApproximateIndex", "ExactIndex", "Scan", "VectorIndex"]


def _read_only(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


NOTHING = (_read_only(np.zeros(0, dtype=np.int64)), _read_only(np.zeros(0)))  # rows and scores of no hit


class VectorIndex(Protocol):
    """What the Searcher ranks with; `name` is "exact" or "ann"."""

    name: str

    def top(self, query: np.ndarray, depth: int, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Rows and float64 scores of the best `depth` rows allowed by `mask` (None: all), best first."""
        ...


class Scan:
    """One query's fast scores over every row, made exact lazily to the depth asked for."""

    def __init__(self, scorer: Any, query: np.ndarray, scores: FastScores, num_rows: int,
                 mask: np.ndarray | None) -> None:
        self.scorer, self.query, self.eps = scorer, np.asarray(query, dtype=np.float64), scores.eps
        self.scores = scores.masked(mask)
        self.candidates = num_rows if mask is None else int(np.count_nonzero(mask))
        self._best = NOTHING

    def top(self, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows and float64 scores of the best `depth` allowed rows, best first (ties: lower row)."""
        depth = min(depth, self.candidates)
        if depth <= len(self._best[0]):
            return self._best[0][:depth], self._best[1][:depth]
        rows = self._candidate_rows(depth)
        exact = self.scorer.exact(self.query, rows)
        order = np.lexsort((rows, -exact))[:depth]
        self._best = (rows[order], exact[order])
        return self._best

    def _candidate_rows(self, depth: int) -> np.ndarray:
        """Every row whose fast score is within 2*eps of the depth-th fast score (enough for exactness:
        a row of the exact top `depth` has a fast score >= the depth-th fast score - 2 * eps)."""
        fetch = min(self.candidates, max(depth + 32, 2 * depth))
        while True:
            values, rows = self.scores.top(fetch)
            low = float(values[depth - 1]) - 2 * self.eps
            if fetch == self.candidates or float(values[-1]) < low:
                return rows[values >= low]  # only these are re-scored
            fetch = min(self.candidates, fetch * 4)

    def count_at_least(self, threshold: float) -> int:
        """How many allowed rows score >= threshold exactly (fast scores decide all but a thin band)."""
        sure = self.scores.count_at_least(threshold + self.eps)
        band = self.scores.rows_between(threshold - self.eps, threshold + self.eps)
        if len(band) == 0:
            return sure
        return sure + int((self.scorer.exact(self.query, band) >= threshold).sum())


class ExactIndex:
    """Exact ranking by a scorer (scorers.py): a fast pass over every row, then float64 re-scoring."""

    name = "exact"

    def __init__(self, scorer: Any, num_rows: int) -> None:
        self.scorer, self.num_rows = scorer, num_rows

    def scan(self, query: np.ndarray, mask: np.ndarray | None) -> Scan:
        """The fast pass for `query`; its `top(depth)` and `count_at_least` reuse it."""
        return Scan(self.scorer, query, self.scorer.fast(query), self.num_rows, mask)

    def scans(self, queries: np.ndarray, mask: np.ndarray | None) -> list[Scan]:
        """Fast passes for several queries at once (one read of the matrix; image scorers only)."""
        return [Scan(self.scorer, query, scores, self.num_rows, mask)
                for query, scores in zip(queries, self.scorer.fast_batch(queries), strict=True)]

    def top(self, query: np.ndarray, depth: int, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        return self.scan(query, mask).top(depth)


class ApproximateIndex:
    """Candidates from a loaded faiss index (clipwidgets.ann.AnnIndex), scores exact.

    It over-fetches (4 x the ranks needed, more by the fraction a mask filters out) and falls back to
    `exact` when too few candidates pass the mask.
    """

    name = "ann"

    def __init__(self, ann: Any, images: ImageScorer, exact: ExactIndex, num_rows: int) -> None:
        self.ann, self.images, self.exact, self.num_rows = ann, images, exact, num_rows

    def top(self, query: np.ndarray, depth: int, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        candidates = self.num_rows if mask is None else int(np.count_nonzero(mask))
        depth = min(depth, candidates)
        if depth == 0:
            return NOTHING
        fetch = depth * 4 if mask is None else depth * 4 * max(1, self.num_rows // max(1, candidates))
        rows = self.ann.search(np.asarray(query, dtype=np.float32), min(self.num_rows, fetch))
        if mask is not None:
            rows = rows[mask[rows]]
        if len(rows) < depth:
            return self.exact.top(query, depth, mask)
        exact = self.images.exact(query, rows)
        order = np.lexsort((rows, -exact))[:depth]
        return rows[order], exact[order]
