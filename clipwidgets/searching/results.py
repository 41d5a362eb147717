"""Search results: `Hit`, `SearchResults` (a sequence of hits plus what produced them) and the
adaptive cutoff that decides where a ranking stops at a clear gap."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np

__all__ = ["ADAPTIVE_MIN_GAP", "ADAPTIVE_RATIO", "ADAPTIVE_WINDOW", "Hit", "QueryOrigin", "SearchResults",
           "adaptive_cutoff"]

ADAPTIVE_WINDOW = 100
ADAPTIVE_RATIO = 8.0
ADAPTIVE_MIN_GAP = 0.01


@dataclass(frozen=True)
class QueryOrigin:
    """The query a ranking came from, as `Searcher.search` was given it (what `Searcher.explain(hit)`
    needs): the query, the negative text and the feedback marks with their weights."""

    query: Any
    negative: str | None = None
    positive: tuple[Any, ...] = ()
    negative_images: tuple[Any, ...] = ()
    feedback_weights: Any = None


@dataclass(frozen=True)
class Hit:
    """One ranked result: 1-based rank, store row, relative path, cosine score, the image's captions,
    and `origin`, the query that produced it (not compared, not in records)."""

    rank: int
    index: int
    path: str
    score: float
    captions: tuple[str, ...] = ()
    origin: QueryOrigin | None = field(default=None, compare=False, repr=False)

    def to_record(self) -> dict[str, Any]:
        """A JSON-ready dict: rank, index, path, score, and captions when the image has any."""
        record: dict[str, Any] = {"rank": self.rank, "index": self.index, "path": self.path,
                                  "score": self.score}
        if self.captions:
            record["captions"] = list(self.captions)
        return record


@dataclass(frozen=True)
class SearchResults(Sequence[Hit]):
    """The hits of one page plus what produced them.

    `total` is how many items the ranking holds for paging: those passing the filters (images with
    captions for target="captions") and `min_score`, cut at the adaptive gap when one was found;
    near-duplicate collapsing is not counted. `elapsed_ms` covers encoding and ranking.
    """

    hits: tuple[Hit, ...]
    total: int
    k: int
    offset: int
    query: str
    target: str = "images"
    backend: str = "exact"
    elapsed_ms: float = field(default=0.0, compare=False)

    @overload
    def __getitem__(self, index: int) -> Hit: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[Hit, ...]: ...

    def __getitem__(self, index: int | slice) -> Hit | tuple[Hit, ...]:
        return self.hits[index]

    def __len__(self) -> int:
        return len(self.hits)

    def __iter__(self) -> Iterator[Hit]:
        return iter(self.hits)

    def to_records(self) -> list[dict[str, Any]]:
        """The hits as JSON-ready dicts (see `Hit.to_record`)."""
        return [hit.to_record() for hit in self.hits]

    def to_text(self) -> str:
        """Deterministic plain text: one "rank. path  score" line per hit, scores to 4 decimals."""
        if not self.hits:
            return f"no results for {self.query!r}"
        return "\n".join(f"{hit.rank}. {hit.path}  {hit.score:.4f}" for hit in self.hits)

    def __str__(self) -> str:
        return self.to_text()

    def __repr__(self) -> str:
        return f"<SearchResults for {self.query!r}: {len(self.hits)} of {self.total}>\n{self.to_text()}"


def adaptive_cutoff(scores: Sequence[float] | np.ndarray) -> int | None:
    """How many of the descending `scores` come before a clear gap, or None when there is none.

    Among the first ADAPTIVE_WINDOW scores, the gap after rank i (1-based) is weighted by i, because
    in the tail of a score distribution gaps shrink roughly as 1/i: i * (s_i - s_(i+1)). The cut
    falls after the rank with the largest weighted gap when that is at least ADAPTIVE_RATIO times the
    median weighted gap and the raw gap is at least ADAPTIVE_MIN_GAP (cosine units).
    """
    window = np.asarray(scores, dtype=np.float64)[:ADAPTIVE_WINDOW]
    if len(window) < 3:
        return None
    gaps = window[:-1] - window[1:]
    weighted = gaps * np.arange(1, len(gaps) + 1)
    best = int(np.argmax(weighted))
    if gaps[best] >= ADAPTIVE_MIN_GAP and weighted[best] >= ADAPTIVE_RATIO * float(np.median(weighted)):
        return best + 1
    return None
