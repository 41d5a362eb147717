"""BlockMatrix: the store's image vectors as search reads them, over one block or many.

`store.vector_blocks()` gives VectorBlock(vectors, rows) runs: `vectors[i]` is the embedding of store
row `rows[i]`, or of a deleted image where `rows[i]` is -1. A format v1 store is one block whose rows
are 0..n-1; a segmented store gives one memory-mapped block per segment. The fast pass scores each
block in place (no copy of a mapped segment) and keeps the scores per block (see fast.py); exact
re-scoring and "more like this" read single rows through a row -> position map.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import StoreError
from . import native
from .fast import FastScores, Part
from .kernels import Kernel, plan_kernel

__all__ = ["BlockMatrix", "dot64"]

_EXACT_ROWS = 1 << 16  # rows widened to float64 at a time by the exact re-scoring


class BlockMatrix:
    """`num_rows` x `dim` vectors in store-row order, held as `blocks` (VectorBlock-like objects).

    Small collections are gathered into one array (with a float32 copy for the BLAS kernel where that
    wins on this CPU, see kernels.py); larger ones stay as their blocks, each scored in place.
    `flags` overrides the CPU's feature flags (tests).
    """

    def __init__(self, blocks: Sequence[Any], num_rows: int, dim: int, *,
                 flags: frozenset[str] | None = None) -> None:
        self.num_rows, self.dim = num_rows, dim
        plan = plan_kernel(num_rows, dim, flags=flags)
        live = sum(int(np.count_nonzero(np.asarray(block.rows) >= 0)) for block in blocks)
        if live != num_rows:
            raise StoreError(f"The store's vector blocks hold {live} live rows but it has {num_rows} images: "
                             "the store is inconsistent; run `clipwidgets info --store S` to check it.")
        identity = len(blocks) == 1 and np.array_equal(blocks[0].rows, np.arange(num_rows))
        if not identity and plan.small:  # small: one array in store-row order
            gathered = _gather_all(blocks, num_rows, dim)
            blocks, identity = [_Block(gathered, np.arange(num_rows, dtype=np.int64))], True
        self.blocks = [block.vectors for block in blocks]
        self.kernels = [Kernel(block.vectors, plan) for block in blocks]
        self._rows = [None] if identity else [_rows_of(np.asarray(block.rows, np.int64)) for block in blocks]
        self._starts = np.cumsum([0] + [len(block.vectors) for block in blocks])
        self._position = None if identity else _positions(blocks, num_rows)

    @property
    def single(self) -> bool:
        """True when the vectors are one array in store-row order (no lookup)."""
        return self._position is None

    def fast_scores(self, query: np.ndarray) -> FastScores:
        """Fast scores of every store row for the unit `query`, per block, with their error bound."""
        parts, eps = [], 0.0
        for kernel, rows in zip(self.kernels, self._rows, strict=True):
            scores, block_eps = kernel.scores(query)
            parts.append(Part(scores, rows))
            eps = max(eps, block_eps)
        return FastScores(parts, eps)

    def batch_scores(self, queries: np.ndarray) -> list[FastScores]:
        """Fast scores for several unit queries (one pass over each block), one FastScores per query."""
        blocks = [kernel.batch_scores(queries) for kernel in self.kernels]
        eps = max((block_eps for _, block_eps in blocks), default=0.0)
        pairs = list(zip(blocks, self._rows, strict=True))
        return [FastScores([Part(scores[i], rows) for (scores, _), rows in pairs], eps)
                for i in range(len(queries))]

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """The stored vectors of store rows `rows` (stored dtype), in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        if self._position is None:
            return np.asarray(self.blocks[0][rows])
        positions = self._position[rows]
        which = np.searchsorted(self._starts, positions, side="right") - 1
        out = np.empty((len(rows), self.dim), dtype=self.blocks[0].dtype if self.blocks else np.float32)
        for block in np.unique(which):
            picked = np.flatnonzero(which == block)
            local = positions[picked] - self._starts[block]
            order = np.argsort(local, kind="stable")  # ascending reads of a mapped block
            out[picked[order]] = self.blocks[block][local[order]]
        return out

    def dot64(self, rows: np.ndarray, query: np.ndarray) -> np.ndarray:
        """float64 dot products of the stored vectors of `rows` with the float64 `query`."""
        if self._position is None:
            kernel = self.kernels[0]
            if kernel.copy is None and kernel.native:  # compiled: numpy widens float16 slowly
                return native.exact16(kernel.half_rows, rows, query, level=kernel.native)
            # the same values in float32, which widens faster than float16
            return dot64(self.blocks[0] if kernel.copy is None else kernel.copy, rows, query)
        out = np.empty(len(rows))
        for first in range(0, len(rows), _EXACT_ROWS):
            chunk = rows[first:first + _EXACT_ROWS]
            out[first:first + len(chunk)] = _products(self.gather(chunk), query)
        return out


class _Block:
    def __init__(self, vectors: np.ndarray, rows: np.ndarray) -> None:
        self.vectors, self.rows = vectors, rows


def _rows_of(rows: np.ndarray) -> int | np.ndarray:
    """A block's store rows: the first row when they are one run with none deleted, else the array."""
    if len(rows) and rows[0] >= 0 and bool((np.diff(rows) == 1).all()):
        return int(rows[0])
    return rows


def _gather_all(blocks: Sequence[Any], num_rows: int, dim: int) -> np.ndarray:
    dtype = np.result_type(*[block.vectors.dtype for block in blocks]) if blocks else np.float16
    out = np.empty((num_rows, dim), dtype=dtype)
    for block in blocks:
        rows = np.asarray(block.rows)
        live = rows >= 0
        out[rows[live]] = np.asarray(block.vectors)[live]
    return out


def _positions(blocks: Sequence[Any], num_rows: int) -> np.ndarray:
    """Position (over the concatenated blocks) of each store row's vector."""
    total = sum(len(block.vectors) for block in blocks)
    position: np.ndarray = np.full(num_rows, -1, dtype=np.int32 if total < 2**31 else np.int64)
    start = 0
    for block in blocks:
        rows = np.asarray(block.rows, dtype=np.int64)
        live = np.flatnonzero(rows >= 0)
        position[rows[live]] = start + live
        start += len(rows)
    if (position < 0).any():
        missing = int(np.flatnonzero(position < 0)[0])
        raise StoreError(f"Store row {missing} has no vector in the store's blocks: the store is "
                         "inconsistent.")
    return position


def dot64(matrix: np.ndarray, rows: np.ndarray, query: np.ndarray) -> np.ndarray:
    """float64 dot products of matrix[rows] with `query`, a block of rows at a time."""
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) <= _EXACT_ROWS:  # one block: the usual few dozen candidates of a top-k
        return _products(matrix[rows], query)
    out = np.empty(len(rows))
    for first in range(0, len(rows), _EXACT_ROWS):
        block = rows[first:first + _EXACT_ROWS]
        out[first:first + len(block)] = _products(matrix[block], query)
    return out


def _products(vectors: np.ndarray, query: np.ndarray) -> np.ndarray:
    """float64 `vectors @ query` on the calling thread (einsum, not BLAS: a short multi-threaded
    product costs more in thread hand-offs than the few hundred rows being re-scored)."""
    return np.einsum("ij,j->i", vectors.astype(np.float64), query)
