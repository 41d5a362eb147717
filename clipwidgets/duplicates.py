"""Near-duplicate images: every pair of store images whose embeddings have cosine >= a threshold,
joined into groups (a resized, re-encoded or slightly cropped copy lands in its original's group).

The search is exact and blocked: all pairs are scored a block of 2048 x 2048 at a time with one
matrix product (bfloat16 where the CPU has it natively, float32 elsewhere); a row maximum finds the
few rows with a pair within the kernel's rounding slack of the threshold, and only those pairs are
scored again in float64 from the stored vectors. No pair is missed and none is kept wrongly. The cost
is quadratic: about N**2 / 2 * D multiply-adds (see docs/explore.md for measured times).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import cpu
from .errors import InvalidInputError

__all__ = ["DEFAULT_THRESHOLD", "DuplicateStats", "duplicate_rows", "find_duplicates"]

DEFAULT_THRESHOLD = 0.95
_BLOCK = 2048
_FP32_SLACK = 1e-4
_BF16_SLACK = 2.0**-6  # bf16 keeps 8 significant bits: a dot of two unit vectors is off < 2**-7


@dataclass
class DuplicateStats:
    """What the last `duplicate_rows` call did: pairs bounded, candidates re-scored, pairs found."""

    pairs: int = 0
    candidates: int = 0
    found: int = 0
    kernel: str = ""


def find_duplicates(store: Any, threshold: float = DEFAULT_THRESHOLD, *,
                    stats: DuplicateStats | None = None) -> list[list[str]]:
    """Groups of relative paths of near-duplicate images (cosine >= threshold), each group in store
    order, groups ordered by their first image. `store` is an EmbeddingStore or a store path."""
    from .store import EmbeddingStore

    if isinstance(store, EmbeddingStore):
        paths, matrix = store.image_paths(), store.image_embeddings()
    else:
        with EmbeddingStore.open(store) as opened:
            paths, matrix = opened.image_paths(), np.array(opened.image_embeddings())
    groups = duplicate_rows(matrix, threshold, stats=stats)
    return [[paths[row] for row in group] for group in groups]


def duplicate_rows(matrix: np.ndarray, threshold: float = DEFAULT_THRESHOLD, *,
                   bf16: bool | None = None, stats: DuplicateStats | None = None) -> list[list[int]]:
    """Groups of rows of `matrix` (unit vectors) linked by cosine >= threshold; groups of 2 or more."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise InvalidInputError(f"threshold={threshold!r}: give a cosine in (0, 1], e.g. 0.95.")
    stats = stats if stats is not None else DuplicateStats()
    count = len(matrix)
    if count < 2:
        return []
    use_bf16 = cpu.native_bf16() if bf16 is None else bf16
    bounds = torch.from_numpy(np.ascontiguousarray(matrix, dtype=np.float32))
    slack = _BF16_SLACK if use_bf16 else _FP32_SLACK
    if use_bf16:
        bounds = bounds.to(torch.bfloat16)
    stats.kernel = "bfloat16" if use_bf16 else "float32"
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
