"""SearchOptions: what to return for a query (page, filters, thresholds), validated once.

The Searcher, the CLI and the panel share this one object: each option is checked when the object
is made, so a bad value is reported before any work is done, with the rule and an example.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidInputError

__all__ = ["DEFAULT_DEDUP", "TARGETS", "SearchOptions"]

TARGETS = ("images", "captions", "both")
DEFAULT_DEDUP = 0.95


@dataclass(frozen=True)
class SearchOptions:
    """The options of one search (see docs/search.md, "Options").

    k: results per page; offset: ranks to skip; negative: text whose parts are subtracted;
    min_score: drop results scoring lower; adaptive: stop at a clear gap in the scores;
    path_glob: a glob on the relative path ("dogs/*.jpg") or a plain prefix ("dogs/"); subset: a
    subset name of the store, rows, relative paths or a boolean mask; exclude: rows or paths to
    leave out; dedup: drop a hit whose cosine to a better hit is >= dedup (True = 0.95); target:
    "images", "captions" or "both".
    """

    k: int = 10
    offset: int = 0
    negative: str | None = None
    min_score: float | None = None
    adaptive: bool = False
    path_glob: str | None = None
    subset: Any = None
    exclude: Iterable[int | str] | None = None
    dedup: float | bool | None = None
    target: str = "images"

    def __post_init__(self) -> None:
        k, offset, min_score = self.k, self.offset, self.min_score
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
            raise InvalidInputError(f"k={k!r}: the number of results must be a positive integer.")
        if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)) or offset < 0:
            raise InvalidInputError(f"offset={offset!r}: must be an integer >= 0 (the rank to start after).")
        if min_score is not None and not (isinstance(min_score, (int, float, np.floating))
                                          and -1 <= min_score <= 1):
            raise InvalidInputError(f"min_score={min_score!r}: a cosine score lies between -1 and 1.")
        if self.target not in TARGETS:
            raise InvalidInputError(f"target={self.target!r}: use one of {', '.join(TARGETS)}.")
        if self.negative is not None and not isinstance(self.negative, str):
            raise InvalidInputError(f"negative={self.negative!r}: give text, e.g. 'grass + people'.")
        if self.path_glob is not None and (not isinstance(self.path_glob, str) or not self.path_glob):
            raise InvalidInputError(f"path_glob={self.path_glob!r}: give a glob such as 'dogs/*.jpg' or a "
                                    "prefix such as 'dogs/'.")
        _dedup_threshold(self.dedup)

    @property
    def dedup_threshold(self) -> float | None:
        """The cosine at which a hit counts as a near-duplicate of a better one, or None (no collapsing)."""
        return _dedup_threshold(self.dedup)

    def with_changes(self, **changes: Any) -> SearchOptions:
        """A copy with `changes` applied (those whose value is None are left as they are), validated."""
        given = {name: value for name, value in changes.items() if value is not None}
        return dataclasses.replace(self, **given) if given else self


def _dedup_threshold(dedup: float | bool | None) -> float | None:
    if dedup is None or dedup is False:
        return None
    if dedup is True:
        return DEFAULT_DEDUP
    if not isinstance(dedup, (int, float, np.floating)) or not 0 < dedup <= 1:
        raise InvalidInputError(f"dedup={dedup!r}: give a cosine threshold in (0, 1], e.g. 0.95, or True.")
    return float(dedup)
