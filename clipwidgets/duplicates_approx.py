"""The approximate candidate stage of near-duplicate search, for stores too large for all pairs.

The vectors are clustered (spherical k-means on a sample, `cells` centroids, about 4 sqrt(N)); every
row is assigned its `probes` closest centroids, the first being its own cell. A row is then scored,
with one matrix product per cell, against the rows of each cell it probes: a pair is a candidate
when one of its images probes the other's cell. Near-duplicates (cosine >= 0.95) sit so close that
they almost always share a cell or a neighbouring one; a pair split across cells that neither probes
is missed (the recall measured in docs/explore.md). Every candidate is then confirmed exactly, in
float64 from the stored vectors, so no pair is ever kept wrongly.

The cost is about N * (cells + probes * N / cells) dot products instead of N**2 / 2, read one block of
the store at a time (`vector_blocks()`, memory-mapped segments) and one cell at a time: memory stays
at a few hundred MB beside the store's page cache, never a float32 copy of the whole matrix.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["FP32_SLACK", "PROBES", "CandidatePlan", "approximate_pairs", "plan_cells"]

PROBES = 8
FP32_SLACK = 1e-4
_KMEANS_ITERATIONS = 6
_SAMPLE_PER_CELL = 16
_CHUNK = 16_384
_SEED = 0


@dataclass(frozen=True)
class CandidatePlan:
    """How the approximate stage splits N rows: `cells` centroids, `probes` cells scored per row."""

    cells: int
    probes: int


def plan_cells(count: int, probes: int = PROBES) -> CandidatePlan:
    """About 4 sqrt(N) cells (the cost of assigning rows and of scoring cells then stay balanced)."""
    cells = max(1, min(count // 8, int(4 * math.sqrt(count))))
    return CandidatePlan(cells=cells, probes=max(1, min(probes, cells)))


_Chunks = Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]
_Gather = Callable[[np.ndarray], np.ndarray]


def approximate_pairs(count: int, chunks: _Chunks, gather: _Gather, threshold: float, *,
                      plan: CandidatePlan) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Rows (a, b), a < b, of every candidate pair confirmed at cosine >= threshold, plus the number of
    pairs scored and of candidates re-scored in float64.

    `chunks()` yields (rows, vectors) runs covering rows 0..count-1 once; `gather(rows)` returns the
    stored vectors of some rows. Cells are scored in float32 (a bfloat16 product would need a slack
    of 2**-7 around the threshold, which on clustered collections lets in far more candidates than
    the float32 slack of FP32_SLACK, and gains little on cells this small).
    """
    centroids = _kmeans(gather, count, plan.cells)
    probed = np.empty((count, plan.probes), dtype=np.int32)
    for rows, vectors in chunks():
        scores = _as_tensor(vectors) @ centroids.T
        probed[rows] = torch.topk(scores, plan.probes, dim=1).indices.numpy()
    members = _by_cell(probed[:, 0], plan.cells)
    probers = _by_cell(probed.reshape(-1), plan.cells, per_row=plan.probes)
    found_a, found_b, scored, candidates = [], [], 0, 0
    for cell in range(plan.cells):
        mine, theirs = members[cell], probers[cell]
        if not len(mine) or len(theirs) < 2:
            continue
        own, other = gather(mine), gather(theirs)
        scored += len(mine) * len(theirs)
        left, right, rescored = _confirmed(own, other, mine, theirs, threshold)
        candidates += rescored
        a, b = mine[left], theirs[right]
        found_a.append(np.minimum(a, b))
        found_b.append(np.maximum(a, b))
    if not found_a:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, scored, candidates
    pairs = np.unique(np.stack([np.concatenate(found_a), np.concatenate(found_b)], axis=1), axis=0)
    return pairs[:, 0], pairs[:, 1], scored, candidates


def _confirmed(own: np.ndarray, other: np.ndarray, mine: np.ndarray, theirs: np.ndarray, threshold: float
               ) -> tuple[np.ndarray, np.ndarray, int]:
    """Pairs (i, j) of rows of `own` and `other` (whose store rows, ascending, are `mine` and
    `theirs`) with a cosine >= threshold computed in float64 from the stored vectors, and how many
    pairs were re-scored in float64. All pairs are scored in float32 first (off by < 1e-5 for unit
    vectors); only those within FP32_SLACK of the threshold are re-scored. A row never pairs with
    itself."""
    scores = _as_tensor(own) @ _as_tensor(other).T
    column = np.minimum(np.searchsorted(theirs, mine), len(theirs) - 1)  # each row's own column, if any
    itself = np.flatnonzero(theirs[column] == mine)
    scores[itself, column[itself]] = -1.0
    cut = threshold - FP32_SLACK
    busy = torch.nonzero(torch.amax(scores, dim=1) >= cut).flatten()
    near = torch.nonzero(scores[busy] >= cut).numpy()
    rows, cols = busy.numpy()[near[:, 0]], near[:, 1]
    exact = np.einsum("ij,ij->i", own[rows].astype(np.float64), other[cols].astype(np.float64))
    keep = exact >= threshold
    return rows[keep], cols[keep], len(rows)


def _kmeans(gather: _Gather, count: int, cells: int) -> torch.Tensor:
    """Spherical k-means centroids (cells, D), float32, fitted on a random sample of rows."""
    rng = np.random.default_rng(_SEED)
    size = min(count, max(cells * _SAMPLE_PER_CELL, 1))
    points = _as_tensor(gather(np.sort(rng.choice(count, size=size, replace=False))))
    centroids = points[torch.from_numpy(rng.choice(size, size=cells, replace=False))].clone()
    for _ in range(_KMEANS_ITERATIONS):
        nearest = torch.cat([torch.argmax(points[first:first + _CHUNK] @ centroids.T, dim=1)
                             for first in range(0, size, _CHUNK)])
        counts = torch.bincount(nearest, minlength=cells)
        running = torch.cumsum(points[torch.argsort(nearest)].double(), dim=0)  # sums by differences
        running = torch.cat([torch.zeros(1, running.shape[1], dtype=torch.float64), running])
        ends = torch.cumsum(counts, dim=0)
        sums = (running[ends] - running[ends - counts]).float()
        empty = torch.nonzero(counts == 0).flatten()
        sums[empty] = points[torch.from_numpy(rng.choice(size, size=len(empty), replace=False))]
        centroids = sums / sums.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return centroids


def _by_cell(cell_of: np.ndarray, cells: int, *, per_row: int = 1) -> list[np.ndarray]:
    """For each cell, the rows whose entry (one of `per_row` per row) names it, in row order."""
    order = np.argsort(cell_of, kind="stable")
    bounds = np.searchsorted(cell_of[order], np.arange(cells + 1))
    rows = order // per_row
    return [rows[bounds[cell]:bounds[cell + 1]] for cell in range(cells)]


def _as_tensor(vectors: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(vectors, dtype=np.float32))
