"""Scorers: fast and exact scores of every image for a query, by target.

A scorer gives `fast(query) -> (float32 scores in store-row order, error bound)` for the fast pass,
and `exact(query, rows) -> float64 scores` from the stored values for the rows that can still reach
the requested ranks. "images" scores the image vectors; "captions" scores each image by its best
caption (texts the store links to it); "both" by the mean of the two (images without captions keep
their image score).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Protocol

import numpy as np
import torch

from .blocks import BlockMatrix, dot64
from .fast import FastScores
from .kernels import Kernel, plan_kernel, tensor

__all__ = ["CaptionScorer", "Captions", "ImageScorer", "Scorer", "scorer_for"]


class Scorer(Protocol):
    """Fast and exact scores of every store row for a unit query."""

    def fast(self, query: np.ndarray) -> FastScores: ...

    def exact(self, query: np.ndarray, rows: np.ndarray) -> np.ndarray: ...


class ImageScorer:
    """Scores of the image vectors (a BlockMatrix)."""

    def __init__(self, images: BlockMatrix) -> None:
        self.images = images

    def fast(self, query: np.ndarray) -> FastScores:
        return self.images.fast_scores(np.asarray(query, dtype=np.float32))

    def fast_batch(self, queries: np.ndarray) -> list[FastScores]:
        return self.images.batch_scores(queries.astype(np.float32))

    def exact(self, query: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return self.images.dot64(np.asarray(rows, dtype=np.int64), np.asarray(query, dtype=np.float64))


class Captions:
    """The store's caption vectors and which image each belongs to (texts linked to no image are left out)."""

    def __init__(self, texts: np.ndarray, links: np.ndarray, num_images: int, *,
                 flags: frozenset[str] | None = None) -> None:
        self.texts = np.ascontiguousarray(texts)
        self._flags = flags
        linked = np.asarray(links, dtype=np.int64)
        rows = np.flatnonzero(linked >= 0)
        owners = linked[rows]
        order = np.argsort(owners, kind="stable")
        self.rows, owners = rows[order], owners[order]
        self.owner = tensor(owners)
        self.count = np.bincount(owners, minlength=num_images)
        self.start = np.concatenate([[0], np.cumsum(self.count)[:-1]]).astype(np.int64)
        self.has_caption = self.count > 0
        self.num_images = num_images

    def __len__(self) -> int:
        return len(self.rows)

    @functools.cached_property
    def kernel(self) -> Kernel:
        """The captions' fast kernel, made at the first caption search: most searches score images
        only, and a small matrix's int8 copy takes time to make (40k captions x 512: ~0.17 s)."""
        return Kernel(self.texts, plan_kernel(len(self.texts), self.texts.shape[1], flags=self._flags))

    def best_fast(self, query: np.ndarray) -> tuple[torch.Tensor, float]:
        """Each image's best fast caption score (-inf without captions), and the error bound."""
        scores, eps = self.kernel.scores(query.astype(np.float32))
        picked = scores.float()[tensor(self.rows)]
        best = torch.full((self.num_images,), -math.inf).scatter_reduce_(0, self.owner, picked, reduce="amax")
        return best, eps

    def best_exact(self, query: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Each of `rows`'s best caption score in float64 (-inf without captions)."""
        best = np.full(len(rows), -math.inf)
        has = self.has_caption[rows]
        if has.any():
            owners = rows[has]
            counts = self.count[owners]
            firsts = np.cumsum(counts) - counts
            positions = np.repeat(self.start[owners] - firsts, counts) + np.arange(counts.sum())
            scores = dot64(self.texts, self.rows[positions], query)
            best[has] = np.maximum.reduceat(scores, firsts)
        return best


class CaptionScorer:
    """Scores for target "captions" (best caption) or "both" (mean of image and best caption)."""

    def __init__(self, images: ImageScorer, captions: Captions, target: str) -> None:
        self.images, self.captions, self.target = images, captions, target

    def fast(self, query: np.ndarray) -> FastScores:
        best, eps = self.captions.best_fast(query)
        if self.target == "captions":
            return FastScores.dense(best, eps)
        fast_images = self.images.fast(query)
        images = fast_images.in_row_order(self.captions.num_images)
        both = torch.where(tensor(self.captions.has_caption), (images + best) / 2, images)
        return FastScores.dense(both, max(eps, fast_images.eps))

    def exact(self, query: np.ndarray, rows: np.ndarray) -> np.ndarray:
        query = np.asarray(query, dtype=np.float64)
        rows = np.asarray(rows, dtype=np.int64)
        best = self.captions.best_exact(query, rows)
        if self.target == "captions":
            return best
        images = self.images.exact(query, rows)
        return np.where(self.captions.has_caption[rows], (images + best) / 2, images)


def scorer_for(target: str, images: ImageScorer, captions: Captions | None) -> Any:
    """The scorer of `target` ("images", "captions" or "both")."""
    if target == "images" or captions is None:
        return images
    return CaptionScorer(images, captions, target)
