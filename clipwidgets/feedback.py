"""Relevance feedback: the Rocchio update of a query vector, and the per-search marks a user sets.

    q' = alpha * q + beta * mean(relevant images) - gamma * mean(irrelevant images), renormalised.

`rocchio_parts` returns the three terms as weighted parts so that `clipwidgets.explain` can show what
each contributed; `apply_feedback` is what `Searcher.search(positive=..., negative_images=...)` calls.
`FeedbackMarks` keeps one search's marks with an undo history (the panel keeps one per search).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InvalidInputError

__all__ = ["FeedbackMarks", "FeedbackWeights", "apply_feedback", "feedback_rows", "rocchio", "rocchio_parts"]


@dataclass(frozen=True)
class FeedbackWeights:
    """Rocchio weights: `alpha` for the query, `beta` for the mean of the relevant images, `gamma` for
    the mean of the irrelevant ones (the classic 1, 0.75, 0.15 leans on the relevant side)."""

    alpha: float = 1.0
    beta: float = 0.75
    gamma: float = 0.25

    def __post_init__(self) -> None:
        for name in ("alpha", "beta", "gamma"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0:
                raise InvalidInputError(f"FeedbackWeights({name}={value!r}): a weight is a number >= 0, "
                                        "e.g. FeedbackWeights(alpha=1, beta=0.75, gamma=0.25).")


def rocchio_parts(query: np.ndarray, relevant: np.ndarray, irrelevant: np.ndarray,
                  weights: FeedbackWeights | None = None) -> list[tuple[float, np.ndarray, str]]:
    """The Rocchio terms (weight, unit-free vector, label): the query, the relevant images' mean and the
    irrelevant images' mean; a term without images or with weight 0 is left out."""
    weights = weights or FeedbackWeights()
    parts: list[tuple[float, np.ndarray, str]] = []
    if weights.alpha > 0:
        parts.append((weights.alpha, np.asarray(query, dtype=np.float64), "query"))
    if len(relevant) and weights.beta > 0:
        parts.append((weights.beta, np.asarray(relevant, dtype=np.float64).mean(axis=0),
                      f"marked relevant ({len(relevant)})"))
    if len(irrelevant) and weights.gamma > 0:
        parts.append((-weights.gamma, np.asarray(irrelevant, dtype=np.float64).mean(axis=0),
                      f"marked irrelevant ({len(irrelevant)})"))
    return parts


def rocchio(query: np.ndarray, relevant: np.ndarray, irrelevant: np.ndarray,
            weights: FeedbackWeights | None = None) -> np.ndarray:
    """The updated unit query vector (float32)."""
    parts = rocchio_parts(query, relevant, irrelevant, weights)
    total = sum((weight * vector for weight, vector, _ in parts), np.zeros(len(query)))
    norm = float(np.linalg.norm(total))
    if not parts or not math.isfinite(norm) or norm < 1e-6:
        raise InvalidInputError("The feedback cancels the query out: mark fewer images as irrelevant or "
                                "lower FeedbackWeights.gamma.")
    return (total / norm).astype(np.float32)


def apply_feedback(searcher: Any, vector: np.ndarray, description: str, positive: Iterable[Any] | None,
                   negative_images: Iterable[Any] | None, weights: FeedbackWeights | None
                   ) -> tuple[np.ndarray, str]:
    """`vector` moved by Rocchio towards the `positive` and away from the `negative_images` store
    images (rows or paths), and its description; unchanged when both are empty."""
    good, bad = feedback_rows(searcher, positive), feedback_rows(searcher, negative_images)
    if not len(good) and not len(bad):
        return vector, description
    both = np.intersect1d(good, bad)
    if len(both):
        raise InvalidInputError(f"Images {both.tolist()} are marked both relevant and irrelevant: "
                                "unmark one of the two.")
    updated = rocchio(vector, searcher.store.image_vectors(good), searcher.store.image_vectors(bad), weights)
    marks = f" [+{len(good)} -{len(bad)} marked]"
    return updated, description + marks


def feedback_rows(searcher: Any, items: Iterable[Any] | None) -> np.ndarray:
    """Store rows of `items` (rows or paths), sorted and without repeats."""
    if items is None or (isinstance(items, (list, tuple)) and not items):  # no marks: every search
        return np.zeros(0, dtype=np.int64)
    if isinstance(items, (str, int, np.integer)):
        items = [items]
    return np.unique(np.array([searcher.index_of(item) for item in items], dtype=np.int64))


class FeedbackMarks:
    """One search's marks: rows marked relevant (+1) or irrelevant (-1), with an undo history.

    `mark(rows, +1)` and `mark(rows, -1)` mark, `mark(rows, 0)` unmarks; each call is one step that
    `undo()` reverts.
    """

    def __init__(self) -> None:
        self._marks: dict[int, int] = {}
        self._history: list[dict[int, int]] = []

    def mark(self, rows: Sequence[int], value: int) -> None:
        """Mark `rows` relevant (1), irrelevant (-1) or neither (0), as one undoable step."""
        if value not in (-1, 0, 1):
            raise InvalidInputError(f"mark value {value!r}: use 1 (relevant), -1 (irrelevant) or 0.")
        self.update({int(row): value for row in rows})

    def update(self, values: dict[int, int]) -> None:
        """Set several marks ({row: 1, -1 or 0}) as one undoable step."""
        if set(values.values()) - {-1, 0, 1}:
            raise InvalidInputError(f"marks {values!r}: each value is 1 (relevant), -1 (irrelevant) or 0.")
        self._history.append(dict(self._marks))
        for row, value in values.items():
            if value == 0:
                self._marks.pop(int(row), None)
            else:
                self._marks[int(row)] = value

    def undo(self) -> bool:
        """Revert the last step; False when there is nothing to undo."""
        if not self._history:
            return False
        self._marks = self._history.pop()
        return True

    def value(self, row: int) -> int:
        """1, -1 or 0 for `row`."""
        return self._marks.get(int(row), 0)

    @property
    def positive(self) -> tuple[int, ...]:
        return tuple(sorted(row for row, value in self._marks.items() if value > 0))

    @property
    def negative(self) -> tuple[int, ...]:
        return tuple(sorted(row for row, value in self._marks.items() if value < 0))

    @property
    def can_undo(self) -> bool:
        return bool(self._history)

    def __len__(self) -> int:
        return len(self._marks)

    def __repr__(self) -> str:
        return f"FeedbackMarks(positive={list(self.positive)}, negative={list(self.negative)})"
