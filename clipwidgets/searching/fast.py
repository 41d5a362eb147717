"""FastScores: one query's fast scores over the store's blocks, kept per block.

A segmented store's blocks are scored one by one; scattering every score into one store-order
array and taking one top-k over all of it costs more than the scan at 10M rows (a 40 MB scatter
per query and a top-k over 10M floats: 0.35 s here). So the scores stay per block: a top-`n` takes
the top-`n` of each slice of up to 1M scores, on the search threads side by side (33 against 17 ms
over 10M scores on 2 cores), and merges them (the global top-`n` is always inside that union);
counts add up over blocks, and deleted entries (row -1) and filtered rows score -inf.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from . import native
from .kernels import tensor
from .threads import in_parallel

_TOP_SLICE = 1 << 20  # scores per top-k call: larger parts are cut, and the slices spread over threads

__all__ = ["FastScores", "Part"]


class Part:
    """The fast scores of one block; `rows` maps its positions to store rows: None (position = row),
    an int (a run starting at that row) or an array (-1 for deleted entries)."""

    def __init__(self, scores: torch.Tensor, rows: None | int | np.ndarray) -> None:
        self.scores, self.rows = scores, rows

    def store_rows(self, positions: np.ndarray) -> np.ndarray:
        if self.rows is None:
            return positions
        if isinstance(self.rows, int):
            return positions + self.rows
        return self.rows[positions]

    def allowed(self, mask: np.ndarray) -> np.ndarray:
        """`mask` (one bool per store row) at this block's positions; deleted entries are False."""
        if self.rows is None:
            return mask
        if isinstance(self.rows, int):
            return mask[self.rows:self.rows + len(self.scores)]
        return np.where(self.rows >= 0, mask[self.rows], False)


def _top_of(scores: torch.Tensor, count: int, first: int) -> tuple[np.ndarray, np.ndarray]:
    """The `count` best of scores[first:first + _TOP_SLICE] (float32, descending) and their positions
    in `scores`: compiled selection for float32 scores (native.top), torch.topk otherwise."""
    piece = scores if first == 0 and scores.shape[0] <= _TOP_SLICE else scores[first:first + _TOP_SLICE]
    count = min(count, piece.shape[0])
    if piece.dtype == torch.float32 and count and native.top_built():
        best, positions = native.top(piece.numpy(), count)
    else:
        best, positions = (part.numpy() for part in torch.topk(piece.float(), count))
    return best, positions + first


def _tops(slices: list[tuple[Part, int]], count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [_top_of(part.scores, count, first) for part, first in slices]


class FastScores:
    """Fast scores of every store row for one query, as per-block parts, with an error bound `eps`."""

    def __init__(self, parts: list[Part], eps: float) -> None:
        self.parts, self.eps = parts, eps

    @classmethod
    def dense(cls, scores: torch.Tensor, eps: float) -> FastScores:
        """Scores already in store-row order."""
        return cls([Part(scores, None)], eps)

    def masked(self, mask: np.ndarray | None) -> FastScores:
        """A copy where rows outside `mask` (and deleted entries) score -inf; itself when none do."""
        if mask is None and not any(isinstance(part.rows, np.ndarray) for part in self.parts):
            return self
        parts = []
        for part in self.parts:
            allowed = None
            if mask is not None:
                allowed = part.allowed(mask)
            elif isinstance(part.rows, np.ndarray):
                allowed = part.rows >= 0
            scores = part.scores
            if allowed is not None:
                scores = scores.masked_fill(~tensor(np.ascontiguousarray(allowed)), -math.inf)
            parts.append(Part(scores, part.rows))
        return FastScores(parts, self.eps)

    def top(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """The `count` best fast scores (float32, descending) and their store rows."""
        if len(self.parts) == 1 and self.parts[0].scores.shape[0] <= _TOP_SLICE:
            best, positions = _top_of(self.parts[0].scores, count, 0)
            return best, self.parts[0].store_rows(positions)
        slices = [(part, first) for part in self.parts for first in range(0, len(part.scores), _TOP_SLICE)]
        if not slices:
            return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64)
        threads = max(1, min(torch.get_num_threads(), len(slices)))
        groups = [slices[i::threads] for i in range(threads)]
        found = in_parallel([functools.partial(_tops, group, count) for group in groups])
        values = [best for group in found for best, _ in group]
        rows = [part.store_rows(positions) for group, tops in zip(groups, found, strict=True)
                for (part, _), (_, positions) in zip(group, tops, strict=True)]
        merged, merged_rows = np.concatenate(values), np.concatenate(rows)
        if count < len(merged):
            keep = np.argpartition(-merged, count - 1)[:count]
            merged, merged_rows = merged[keep], merged_rows[keep]
        order = np.argsort(-merged, kind="stable")
        return merged[order], merged_rows[order]

    def count_at_least(self, threshold: float) -> int:
        return sum(int((part.scores >= threshold).sum()) for part in self.parts)

    def rows_between(self, low: float, high: float) -> np.ndarray:
        """Store rows whose fast score lies in [low, high)."""
        found = [part.store_rows(torch.nonzero((part.scores >= low) & (part.scores < high)).flatten().numpy())
                 for part in self.parts]
        return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)

    def in_row_order(self, num_rows: int) -> torch.Tensor:
        """All scores as one float32 tensor in store-row order (-inf for rows no block holds)."""
        if len(self.parts) == 1 and self.parts[0].rows is None:
            return self.parts[0].scores.float()
        out = torch.full((num_rows,), -math.inf)
        for part in self.parts:
            scores = part.scores.float()
            if part.rows is None:
                out[:len(scores)] = scores
            elif isinstance(part.rows, int):
                out[part.rows:part.rows + len(scores)] = scores
            else:
                live = part.rows >= 0
                out[tensor(part.rows[live])] = scores[tensor(live)]
        return out
