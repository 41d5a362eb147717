"""Near-duplicate images: every pair of store images whose embeddings have cosine >= a threshold,
joined into groups (a resized, re-encoded or slightly cropped copy lands in its original's group).

Two ways to find the pairs, chosen by `method` ("auto": exact below APPROXIMATE_FROM images):

- exact and blocked: all pairs are scored a block of 2048 x 2048 at a time with one matrix product
  (bfloat16 where the CPU has it natively, float32 elsewhere); a row maximum finds the few rows with
  a pair within the kernel's rounding slack of the threshold, and only those pairs are scored again
  in float64 from the stored vectors. No pair is missed and none is kept wrongly. The cost is
  quadratic: about N**2 / 2 * D multiply-adds;
- approximate (clipwidgets.duplicates_approx): candidate pairs from clustered cells, each confirmed
  exactly the same way, read block by block from the store's memory-mapped segments. None is kept
  wrongly; a pair may be missed (rarely: see docs/explore.md for the measured recall).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import cpu
from .duplicates_approx import FP32_SLACK, PROBES, approximate_pairs, plan_cells
from .errors import InvalidInputError

__all__ = ["APPROXIMATE_FROM", "DEFAULT_THRESHOLD", "METHODS", "DuplicateStats", "duplicate_rows",
           "find_duplicates"]

DEFAULT_THRESHOLD = 0.95
METHODS = ("auto", "exact", "approximate")
APPROXIMATE_FROM = 50_000  # images from which method="auto" takes the approximate stage (exact: ~45 s there)
_BLOCK = 2048
_CHUNK = 65_536
_BF16_SLACK = 2.0**-6  # bf16 keeps 8 significant bits: a dot of two unit vectors is off < 2**-7


@dataclass
class DuplicateStats:
    """What the last call did: pairs scored, candidates re-scored in float64, pairs found, the kernel's
    dtype and the method ("exact" or "approximate (C cells, P probes)")."""

    pairs: int = 0
    candidates: int = 0
    found: int = 0
    kernel: str = ""
    method: str = ""


def find_duplicates(store: Any, threshold: float = DEFAULT_THRESHOLD, *, method: str = "auto",
                    probes: int = PROBES, stats: DuplicateStats | None = None) -> list[list[str]]:
    """Groups of relative paths of near-duplicate images (cosine >= threshold), each group in store
    order, groups ordered by their first image. `store` is an EmbeddingStore or a store path.
    `method`: "exact", "approximate" (cells scored per image: `probes`), or "auto" (approximate from
    APPROXIMATE_FROM images)."""
    from .store import EmbeddingStore

    if isinstance(store, EmbeddingStore):
        return _store_groups(store, threshold, method, probes, stats)
    with EmbeddingStore.open(store) as opened:
        return _store_groups(opened, threshold, method, probes, stats)


def duplicate_rows(matrix: np.ndarray, threshold: float = DEFAULT_THRESHOLD, *, method: str = "exact",
                   probes: int = PROBES, bf16: bool | None = None,
                   stats: DuplicateStats | None = None) -> list[list[int]]:
    """Groups of rows of `matrix` (unit vectors) linked by cosine >= threshold; groups of 2 or more."""
    _check(threshold, method, probes)
    stats = stats if stats is not None else DuplicateStats()
    count = len(matrix)
    if count < 2:
        return []
    if _chosen(method, count) == "approximate":
        def chunks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for first in range(0, count, _CHUNK):
                yield np.arange(first, min(count, first + _CHUNK)), matrix[first:first + _CHUNK]

        return _approximate_groups(count, chunks, lambda rows: matrix[rows], threshold, probes, stats)
    return _exact_groups(matrix, threshold, bf16, stats)


def _store_groups(store: Any, threshold: float, method: str, probes: int,
                  stats: DuplicateStats | None) -> list[list[str]]:
    _check(threshold, method, probes)
    paths = store.image_paths()
    if _chosen(method, len(paths)) == "exact" or len(paths) < 2:
        groups = duplicate_rows(store.image_embeddings(), threshold, stats=stats)
    else:
        def chunks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for block in store.vector_blocks():  # memory-mapped segments, never one copy of all rows
                for first in range(0, len(block.rows), _CHUNK):
                    rows = block.rows[first:first + _CHUNK]
                    live = rows >= 0
                    yield rows[live], block.vectors[first:first + _CHUNK][live]

        groups = _approximate_groups(len(paths), chunks, store.image_vectors, threshold, probes,
                                     stats if stats is not None else DuplicateStats())
    return [[paths[row] for row in group] for group in groups]


def _check(threshold: Any, method: Any, probes: Any) -> None:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise InvalidInputError(f"threshold={threshold!r}: give a cosine in (0, 1], e.g. 0.95.")
    if method not in METHODS:
        raise InvalidInputError(f"method={method!r}: use one of {', '.join(METHODS)}.")
    if isinstance(probes, bool) or not isinstance(probes, int) or probes < 1:
        raise InvalidInputError(f"probes={probes!r}: give how many cells each image is scored against "
                                f"in the approximate stage, e.g. {PROBES}.")


def _chosen(method: str, count: int) -> str:
    if method == "auto":
        return "approximate" if count >= APPROXIMATE_FROM else "exact"
    return method


def _approximate_groups(count: int, chunks: Any, gather: Any, threshold: float, probes: int,
                        stats: DuplicateStats) -> list[list[int]]:
    plan = plan_cells(count, probes)
    rows, cols, scored, candidates = approximate_pairs(count, chunks, gather, threshold, plan=plan)
    stats.kernel = "float32"
    stats.method = f"approximate ({plan.cells} cells, {plan.probes} probes)"
    stats.pairs += scored
    stats.candidates += candidates
    stats.found += len(rows)
    parent = np.arange(count)
    for a, b in zip(rows.tolist(), cols.tolist(), strict=True):
        _union(parent, a, b)
    return _groups(parent)


def _exact_groups(matrix: np.ndarray, threshold: float, bf16: bool | None,
                  stats: DuplicateStats) -> list[list[int]]:
    count = len(matrix)
    use_bf16 = cpu.native_bf16() if bf16 is None else bf16
    bounds = torch.from_numpy(np.ascontiguousarray(matrix, dtype=np.float32))
    slack = _BF16_SLACK if use_bf16 else FP32_SLACK
    if use_bf16:
        bounds = bounds.to(torch.bfloat16)
    stats.kernel = "bfloat16" if use_bf16 else "float32"
    stats.method = "exact"
    columns = bounds.T.contiguous()
    cut = threshold - slack
    parent = np.arange(count)
    for first in range(0, count, _BLOCK):
        left = bounds[first:first + _BLOCK]
        for other in range(first, count, _BLOCK):
            scores = left @ columns[:, other:other + _BLOCK]
            if other == first:
                scores.fill_diagonal_(-1.0)
                stats.pairs += len(left) * (len(left) - 1) // 2
            else:
                stats.pairs += len(left) * scores.shape[1]
            hot = torch.nonzero(torch.amax(scores, dim=1) >= cut).flatten()  # rows with any candidate
            if not len(hot):
                continue
            pairs = torch.nonzero(scores[hot] >= cut).numpy()
            rows, cols = hot.numpy()[pairs[:, 0]] + first, pairs[:, 1] + other
            if other == first:
                rows, cols = rows[cols > rows], cols[cols > rows]
            stats.candidates += len(rows)
            exact = np.einsum("ij,ij->i", matrix[rows].astype(np.float64), matrix[cols].astype(np.float64))
            keep = exact >= threshold
            stats.found += int(keep.sum())
            for a, b in zip(rows[keep].tolist(), cols[keep].tolist(), strict=True):
                _union(parent, a, b)
    return _groups(parent)


def _union(parent: np.ndarray, a: int, b: int) -> None:
    root_a, root_b = _find(parent, a), _find(parent, b)
    if root_a != root_b:
        parent[max(root_a, root_b)] = min(root_a, root_b)


def _find(parent: np.ndarray, row: int) -> int:
    root = row
    while parent[root] != root:
        root = parent[root]
    while parent[row] != root:
        parent[row], row = root, parent[row]
    return int(root)


def _groups(parent: np.ndarray) -> list[list[int]]:
    roots = parent.copy()
    while True:  # point every row at its root
        higher = roots[roots]
        if np.array_equal(higher, roots):
            break
        roots = higher
    order = np.argsort(roots, kind="stable")
    groups = [members.tolist() for members in np.split(order, np.flatnonzero(np.diff(roots[order])) + 1)
              if len(members) > 1]
    groups.sort(key=lambda group: group[0])
    return groups
