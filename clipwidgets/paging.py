"""The ranking a view keeps for its current search, so paging never runs the search again.

The first search fetches several pages at once (`PREFETCH_PAGES`); switching pages or changing the
page size slices that ranking. Only a page beyond the fetched depth asks the searcher again, for
4 times the depth, so paging to page n costs O(log n) searches in all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["PREFETCH_PAGES", "KeptRanking"]

PREFETCH_PAGES = 5
_GROWTH = 4


class KeptRanking:
    """Hits of one search, fetched lazily to the depth asked for.

    `fetch(depth)` returns SearchResults holding the best `depth` hits (with `total` and `elapsed_ms`).
    `searches` counts the calls to `fetch`.
    """

    def __init__(self, fetch: Callable[[int], Any], first_depth: int) -> None:
        self._fetch = fetch
        self.searches = 0
        self.hits: list[Any] = []
        self.total = 0
        self.elapsed_ms = 0.0
        self._depth = 0
        self._deepen(max(1, first_depth))

    def page(self, page: int, per_page: int) -> list[Any]:
        """The hits of `page` (from 0) with `per_page` hits a page; fetches deeper when needed."""
        end = min((page + 1) * per_page, self.total)
        if end > len(self.hits) and len(self.hits) >= self._depth:
            self._deepen(max(end, self._depth * _GROWTH))
        return self.hits[page * per_page:end]

    def rows(self) -> list[int]:
        """Store rows of the hits fetched so far, best first."""
        return [hit.index for hit in self.hits]

    def _deepen(self, depth: int) -> None:
        found = self._fetch(depth)
        self.searches += 1
        self._depth = depth
        self.hits, self.total, self.elapsed_ms = list(found), int(found.total), float(found.elapsed_ms)
