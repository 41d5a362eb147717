"""FastScores: one query's fast scores over the store's blocks, kept per block.

A segmented store's blocks are scored one by one; scattering every score into one store-order
array and taking one top-k over all of it costs more than the scan at 10M rows (a 40 MB scatter
per query and a top-k over 10M floats: 0.35 s here). So the scores stay per block: a top-`n` takes
each block's top-`n` and merges them (the global top-`n` is always inside that union), counts add
up over blocks, and deleted entries (row -1) and filtered rows score -inf.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .kernels import tensor

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
        values, rows = [], []
        for part in self.parts:
            best, positions = torch.topk(part.scores, min(count, len(part.scores)))
            values.append(best.float().numpy())
            rows.append(part.store_rows(positions.numpy()))
        if len(self.parts) == 1:
            return values[0], rows[0]
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
