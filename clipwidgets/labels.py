"""Zero-shot labels: give every image of a store the closest of a few text labels.

Each label is turned into a prompt ("a photo of a {label}" by default), encoded once, and every image
takes the label whose prompt has the highest cosine with it. `probability` is CLIP's softmax over
the labels (logit scale 100), a relative confidence among the labels given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InvalidInputError

__all__ = ["DEFAULT_TEMPLATE", "LOGIT_SCALE", "ZeroShotLabels", "classify"]

DEFAULT_TEMPLATE = "a photo of a {}"
LOGIT_SCALE = 100.0
_BLOCK_ROWS = 65_536


@dataclass(frozen=True)
class ZeroShotLabels:
    """Per image (store row): the index of its top label, that label's cosine and its probability."""

    labels: tuple[str, ...]
    paths: tuple[str, ...]
    top: np.ndarray
    score: np.ndarray
    probability: np.ndarray

    def label_of(self, row: int) -> str:
        """The top label of store row `row`."""
        return self.labels[int(self.top[row])]

    def rows(self, label: str, *, min_probability: float = 0.0) -> np.ndarray:
        """Rows whose top label is `label` (and probability >= min_probability), best score first."""
        if label not in self.labels:
            raise InvalidInputError(f"{label!r} is not one of the labels ({', '.join(self.labels)}).")
        rows = np.flatnonzero((self.top == self.labels.index(label)) & (self.probability >= min_probability))
        return rows[np.argsort(-self.score[rows], kind="stable")]

    def counts(self) -> dict[str, int]:
        """How many images each label won."""
        counts = np.bincount(self.top, minlength=len(self.labels))
        return {label: int(count) for label, count in zip(self.labels, counts, strict=True)}

    def to_records(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per image: path, label, score, probability."""
        return [{"path": path, "label": self.labels[int(top)], "score": float(score),
                 "probability": float(prob)}
                for path, top, score, prob in zip(self.paths, self.top, self.score, self.probability,
                                                  strict=True)]

    def __len__(self) -> int:
        return len(self.paths)


def classify(searcher: Any, labels: Sequence[str], *, template: str = DEFAULT_TEMPLATE) -> ZeroShotLabels:
    """Label every image of `searcher`'s store with the closest of `labels` (needs the encoder)."""
    if isinstance(labels, str) or not labels:
        raise InvalidInputError(f"labels={labels!r}: give a list of at least one label, e.g. "
                                "['dog', 'cat', 'beach'].")
    cleaned = tuple(str(label).strip() for label in labels)
    if any(not label for label in cleaned) or len(set(cleaned)) != len(cleaned):
        raise InvalidInputError(f"labels={list(labels)!r}: every label must be non-empty and different.")
    if "{}" not in template:
        raise InvalidInputError(f"template={template!r} must contain {{}} where the label goes, e.g. "
                                f"{DEFAULT_TEMPLATE!r}.")
    prompts = [template.format(label) for label in cleaned]
    vectors = np.stack([searcher.query_vector([(1.0, prompt)])[0] for prompt in prompts]).astype(np.float32)
    count = searcher.store.num_images
    top = np.zeros(count, dtype=np.int64)
    score = np.zeros(count, dtype=np.float32)
    probability = np.zeros(count, dtype=np.float32)
    for block in searcher.store.vector_blocks():  # segment by segment: never one copy of the store
        for first in range(0, len(block.rows), _BLOCK_ROWS):
            rows = block.rows[first:first + _BLOCK_ROWS]
            live = rows >= 0  # -1: a deleted image
            cosines = block.vectors[first:first + _BLOCK_ROWS][live].astype(np.float32) @ vectors.T
            best = np.argmax(cosines, axis=1)
            logits = LOGIT_SCALE * (cosines - cosines.max(axis=1, keepdims=True))
            top[rows[live]] = best
            score[rows[live]] = cosines[np.arange(len(best)), best]
            probability[rows[live]] = 1.0 / np.exp(logits).sum(axis=1)
    return ZeroShotLabels(labels=cleaned, paths=tuple(searcher.store.image_paths()), top=top, score=score,
                          probability=probability)
