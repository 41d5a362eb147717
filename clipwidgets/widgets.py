"""SearchPanel: a thin ipywidgets view over a Searcher, made of core widgets only.

Core widgets (no custom front-end code) keep the panel working wherever notebooks run:
JupyterLab, Notebook 7, VS Code, Colab (ipywidgets 7), Binder and Voila. The panel is split by
concern: its widgets and rendering (panel_view.PanelView), cards and detail view (panel_parts),
texts (panel_text), feedback/explain/labels actions (panel_explore.ExploreActions); the ranking it
pages through is a paging.KeptRanking, so paging never searches again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ClipWidgetsError, InvalidInputError, StoreError
from .feedback import FeedbackMarks
from .paging import PREFETCH_PAGES, KeptRanking
from .panel_explore import ExploreActions
from .panel_parts import DETAIL_SIDE, Card
from .panel_text import (
    CardText,
    card_html,
    detail_html,
    failure_text,
    page_count,
    page_label,
    ready_text,
    status_text,
)
from .panel_view import ALL_LABELS, MIN_SCORE_OFF, PER_PAGE_CHOICES, PanelView
from .searcher import Searcher
from .store import EmbeddingStore
from .thumbnails import ThumbnailCache, disk_cache_dir, placeholder_jpeg
from .types import EncoderLike, PathLike

__all__ = ["MIN_SCORE_OFF", "PER_PAGE_CHOICES", "CardText", "Request", "SearchPanel", "card_html",
           "failure_text", "page_count", "page_label", "status_text"]


@dataclass(frozen=True)
class Request:
    """What the panel shows: a text query, "more like" a stored image, or chosen rows ("rows", e.g. a
    selection on the embedding map), with the feedback marks and the label filter it ran with."""

    kind: str  # "text", "like" or "rows"
    query: Any  # str, row/path, or a tuple of rows
    negative: str | None = None
    min_score: float | None = None
    positive: tuple[int, ...] = ()
    negative_images: tuple[int, ...] = ()
    label: str | None = None

    @property
    def key(self) -> tuple[str, Any, str | None]:
        """The search the marks belong to."""
        return self.kind, self.query, self.negative


class SearchPanel(ExploreActions, PanelView):
    """Search a store from a notebook: query box, result grid, paging, "More like this", details,
    relevance feedback, "why this result?", and a label filter.

    `store_or_searcher` is a Searcher, an EmbeddingStore or a store path; `encoder` is used for text
    queries (see `Searcher`). Errors never escape as tracebacks: they appear in the status line.
    Drive it from code with `search()`, `more_like()`, `show_rows()`, `next_page()`, `previous_page()`,
    `mark()`, `feedback()`, `undo_mark()`, `show_detail()`, `explain()`, `set_labels()`; read
    `results`, `status`, `error`, `marks` and `results_text()`.
    """

    def __init__(self, store_or_searcher: Searcher | EmbeddingStore | PathLike | None,
                 encoder: EncoderLike | None = None, *, per_page: int = 24,
                 thumbnails: ThumbnailCache | None = None, disk_cache: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.results: list[Any] = []
        self.total = 0
        self.status = ""
        self.error: str | None = None
        self.labels: Any = None
        self._request: Request | None = None
        self._ranking: KeptRanking | None = None
        self._page = 0
        self._cards: list[Card] = []
        self._marks: dict[tuple, FeedbackMarks] = {}
        self._listeners: list[Callable[[SearchPanel], None]] = []
        self._quiet = False
        self._build_controls(per_page)
        self.searcher: Searcher | None = None
        self.thumbnails: ThumbnailCache | None = thumbnails
        try:
            self.searcher = _as_searcher(store_or_searcher, encoder)
            store = self.searcher.store
            if self.thumbnails is None:
                disk_dir = disk_cache_dir(store.path) if disk_cache else None
                self.thumbnails = ThumbnailCache(store, disk_dir=disk_dir)
            if store.num_images == 0:
                raise StoreError(f"The store {store.path} has no images yet: index a folder first, e.g. "
                                 f"`clipwidgets index IMAGES_DIR --store {store.path}`.")
            self._set_status(ready_text(store.num_images))
        except (ClipWidgetsError, OSError) as error:
            self.show_error(error)

    # ---- programmatic API ------------------------------------------------------------------

    def search(self, text: str | None = None, *, negative: str | None = None) -> list[Any]:
        """Search for `text` (default: the query box), optionally pushing away from `negative`.
        The same search as the one shown (e.g. Enter, then the Search button) does not run again."""
        with self._quietly():
            if text is not None:
                self.query_box.value = text
            if negative is not None:
                self.negative_box.value = negative
        query = self.query_box.value.strip()
        if not query:
            self._set_status("Type what you are looking for (e.g. 'a dog on a beach') and press Enter.")
            return self.results
        self._show(self._new_request("text", query))
        return self.results

    def more_like(self, index_or_relpath: int | str) -> list[Any]:
        """Show the images most similar to one stored image (a row index or a relative path),
        pushed away from the negative prompt when there is one."""
        self._show(self._new_request("like", index_or_relpath))
        return self.results

    def show_rows(self, rows: Any) -> list[Any]:
        """Show chosen store rows (e.g. a selection on the embedding map), ranked by the current text
        query when there is one, else by closeness to the rows' mean embedding."""
        self._show(self._new_request("rows", tuple(sorted({int(row) for row in rows}))))
        return self.results

    def next_page(self) -> list[Any]:
        """Show the next page of the current search (no-op on the last page)."""
        if self._ranking is not None and self._page + 1 < page_count(self.total, self.per_page):
            self._render_page(self._page + 1)
        return self.results

    def previous_page(self) -> list[Any]:
        """Show the previous page of the current search (no-op on the first page)."""
        if self._ranking is not None and self._page > 0:
            self._render_page(self._page - 1)
        return self.results

    def show_detail(self, position: int) -> None:
        """Show the detail view (large image, full path, captions, score) of the result at `position`
        on the page (counting from 0)."""
        if not 0 <= position < len(self.results):
            self.show_error(f"There is no result at position {position}: the page shows "
                            f"{len(self.results)} results (positions 0 to {len(self.results) - 1}).")
            return
        hit = self.results[position]
        self._detail_position = position
        try:
            path = self._open_searcher.store.abspath(hit.index)
            assert self.thumbnails is not None  # set whenever a searcher is
            image = self.thumbnails.get(hit.index, max_side=DETAIL_SIDE)
        except (ClipWidgetsError, OSError) as error:
            image = placeholder_jpeg(DETAIL_SIDE)
            self.show_error(error)
            path = hit.path
        self.detail.show(image, detail_html(hit, str(path)))

    def hide_detail(self) -> None:
        """Hide the detail view and drop its image from the widget state."""
        self.detail.hide()

    # ---- searching ---------------------------------------------------------------------------

    def _new_request(self, kind: str, query: Any) -> Request:
        marks = self._marks.get((kind, query, self.negative_box.value.strip() or None), FeedbackMarks())
        label = self.label_box.value if self.label_box.value != ALL_LABELS else None
        return Request(kind, query, self.negative_box.value.strip() or None, self._min_score(),
                       marks.positive, marks.negative, label)

    def _show(self, request: Request) -> None:
        """Show page 1 of `request`, searching only when it differs from the search shown."""
        if self.searcher is None:
            return
        if request != self._request or self._ranking is None or self.error is not None:
            try:
                ranking = KeptRanking(lambda depth: self._fetch(request, depth),
                                      self.per_page * PREFETCH_PAGES)
            except (ClipWidgetsError, OSError) as error:
                self.show_error(error)
                return
            self._request, self._ranking = request, ranking
        self._render_page(0)

    @property
    def _open_searcher(self) -> Searcher:
        """The searcher, for actions that run only once a store is open."""
        assert self.searcher is not None
        return self.searcher

    def _fetch(self, request: Request, depth: int) -> Any:
        options: dict[str, Any] = {"k": depth, "negative": request.negative, "min_score": request.min_score}
        subset = self._subset(request)
        if subset is not None:
            options["subset"] = subset
        if request.kind == "like" and not (request.positive or request.negative_images):
            return self._open_searcher.more_like(request.query, **options)
        return self._open_searcher.search(self._query_of(request), positive=request.positive,
                                    negative_images=request.negative_images, **options)

    def _query_of(self, request: Request) -> Any:
        """What `Searcher.search` ranks by for `request`."""
        if request.kind == "text":
            return request.query
        store = self._open_searcher.store
        if request.kind == "like":
            return store.image_vectors([self._open_searcher.index_of(request.query)])[0].astype(np.float32)
        text = self.query_box.value.strip()
        return text if text else store.image_vectors(list(request.query)).astype(np.float32).mean(axis=0)

    def _subset(self, request: Request) -> np.ndarray | None:
        masks = []
        if request.kind == "rows":
            if not request.query:
                raise InvalidInputError("No images chosen: select some points on the map first.")
            mask = np.zeros(self._open_searcher.num_images, dtype=bool)
            mask[list(request.query)] = True
            masks.append(mask)
        if request.label is not None:
            mask = np.zeros(self._open_searcher.num_images, dtype=bool)
            mask[self.labels.rows(request.label)] = True
            masks.append(mask)
        return np.logical_and.reduce(masks) if masks else None

    def _like_position(self, position: int) -> None:
        self.more_like(self.results[position].index)

    # ---- event handlers ------------------------------------------------------------------------

    def _on_query(self, change: dict) -> None:
        if not self._quiet:
            self._guarded(lambda _: self.search())(change)

    def _on_per_page(self, change: dict) -> None:
        if not self._quiet and self._ranking is not None:
            self._guarded(lambda _: self._render_page(0))(change)

    def _on_refine(self, change: dict) -> None:
        if self._quiet:
            return
        if self._request is None:
            if change["owner"] is self.label_box and self.labels is not None and change["new"] != ALL_LABELS:
                self._guarded(lambda _: self.show_rows(self.labels.rows(change["new"])))(change)
            return
        request = self._request
        if request.kind == "text":
            self._guarded(lambda _: self.search())(change)
        else:
            self._guarded(lambda _: self._show(self._new_request(request.kind, request.query)))(change)

def _as_searcher(store_or_searcher: Searcher | EmbeddingStore | PathLike | None,
                 encoder: EncoderLike | None) -> Searcher:
    if isinstance(store_or_searcher, Searcher):
        return store_or_searcher
    if store_or_searcher is None:
        raise InvalidInputError("No store given: pass SearchPanel a Searcher, an EmbeddingStore or the "
                                "path of a store file built with `clipwidgets index`.")
    return Searcher(store_or_searcher, encoder)
