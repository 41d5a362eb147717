"""SearchPanel: a thin ipywidgets view over a Searcher, made of core widgets only.

Core widgets (no custom front-end code) keep the panel working wherever notebooks run:
JupyterLab, Notebook 7, VS Code, Colab (ipywidgets 7), Binder and Voila. What the panel shows is
computed in clipwidgets.panel_text; its cards and detail view are in clipwidgets.panel_parts; the
ranking it pages through is a clipwidgets.paging.KeptRanking, so paging never searches again.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import PurePosixPath
from typing import Any

import ipywidgets as widgets
import numpy as np

from .errors import ClipWidgetsError, InvalidInputError, StoreError
from .feedback import FeedbackMarks
from .paging import PREFETCH_PAGES, KeptRanking
from .panel_parts import CARD_WIDTH_PX, DETAIL_SIDE, Card, DetailView
from .panel_text import (
    CardText,
    card_html,
    card_text,
    detail_html,
    failure_text,
    page_count,
    page_label,
    ready_text,
    results_text,
    status_text,
)
from .searcher import Searcher
from .thumbnails import DEFAULT_SIDE, ThumbnailCache, disk_cache_dir, placeholder_jpeg

__all__ = ["PER_PAGE_CHOICES", "CardText", "Request", "SearchPanel", "card_html", "failure_text",
           "page_count", "page_label", "status_text"]

PER_PAGE_CHOICES = (12, 24, 48, 96)
MIN_SCORE_OFF = -1.0
ALL_LABELS = "all labels"
_ERROR_COLOR = "#b00020"
_log = logging.getLogger(__name__)


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


class SearchPanel(widgets.VBox):
    """Search a store from a notebook: query box, result grid, paging, "More like this", details,
    relevance feedback, "why this result?", and a label filter.

    `store_or_searcher` is a Searcher, an EmbeddingStore or a store path; `encoder` is used for text
    queries (see `Searcher`). Errors never escape as tracebacks: they appear in the status line.
    Drive it from code with `search()`, `more_like()`, `show_rows()`, `next_page()`, `previous_page()`,
    `mark()`, `feedback()`, `undo_mark()`, `show_detail()`, `explain()`, `set_labels()`; read
    `results`, `status`, `error`, `marks` and `results_text()`.
    """

    def __init__(self, store_or_searcher: Any, encoder: Any = None, *, per_page: int = 24,
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

    @property
    def marks(self) -> FeedbackMarks | None:
        """The marks of the current search (None before the first search)."""
        if self._request is None:
            return None
        return self._marks.setdefault(self._request.key, FeedbackMarks())

    def mark(self, item: Any, value: int, *, position: bool = False) -> None:
        """Mark a store image (row or path; a position on the page with position=True) as relevant (1),
        irrelevant (-1) or neither (0) for the current search; `refine()` uses the marks."""
        if self.marks is None or self.searcher is None:
            self.show_error("Search first: marks belong to a search.")
            return
        try:
            row = self.results[item].index if position else self.searcher.index_of(item)
            self.marks.mark([row], value)
        except (ClipWidgetsError, IndexError) as error:
            self.show_error(error if isinstance(error, ClipWidgetsError) else f"No result at {item}.")
            return
        self._render_marks()

    def feedback(self, positive: Any = (), negative: Any = ()) -> list[Any]:
        """Mark `positive` images relevant and `negative` ones irrelevant (rows or paths) as one
        undoable step, then rank again with the Rocchio update of the query."""
        if self.marks is None or self.searcher is None:
            self.show_error("Search first: feedback refines a search.")
            return self.results
        try:
            good = [self.searcher.index_of(item) for item in positive]
            bad = [self.searcher.index_of(item) for item in negative]
        except ClipWidgetsError as error:
            self.show_error(error)
            return self.results
        both = set(good) & set(bad)
        if both:
            self.show_error(f"Images {sorted(both)} are both in positive and negative: give each once.")
            return self.results
        self.marks.update({**dict.fromkeys(good, 1), **dict.fromkeys(bad, -1)})
        return self.refine()

    def refine(self) -> list[Any]:
        """Rank the current search again with its marks (Rocchio relevance feedback)."""
        if self._request is not None:
            self._show(replace(self._request, positive=self.marks.positive,
                               negative_images=self.marks.negative))
        return self.results

    def undo_mark(self) -> list[Any]:
        """Undo the last marking step; the ranking follows when it used the marks."""
        if self.marks is None or not self.marks.undo():
            return self.results
        if self._request.positive or self._request.negative_images:
            return self.refine()
        self._render_marks()
        return self.results

    def set_labels(self, labels: Any) -> None:
        """Offer a label filter (clipwidgets.labels.ZeroShotLabels, from `searcher.classify`)."""
        self.labels = labels
        with self._quietly():
            self.label_box.options = [ALL_LABELS, *labels.labels]
            self.label_box.value = ALL_LABELS
        self.label_box.layout.display = "flex"

    def filter_label(self, label: str | None) -> list[Any]:
        """Show only images whose zero-shot label is `label` (None: all)."""
        self.label_box.value = label or ALL_LABELS
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
            path = self.searcher.store.abspath(hit.index)
            image = self.thumbnails.get(hit.index, max_side=DETAIL_SIDE)
        except (ClipWidgetsError, OSError) as error:
            image = placeholder_jpeg(DETAIL_SIDE)
            self.show_error(error)
            path = hit.path
        self.detail.show(image, detail_html(hit, str(path)))

    def explain(self, position: int | None = None, *, heatmap: bool = True) -> Any:
        """Why the result at `position` (default: the one in the detail view) ranks where it does:
        shown in the detail view and returned (clipwidgets.explain.Explanation)."""
        position = self._detail_position if position is None else position
        if self.detail.layout.display == "none" or self._detail_position != position:
            self.show_detail(position)
            if self.detail.layout.display == "none":
                return None
        hit, request = self.results[position], self._request
        try:
            found = self.searcher.explain(hit, self._query_of(request), negative=request.negative,
                                          positive=request.positive, negative_images=request.negative_images,
                                          heatmap=heatmap)
            overlay = None
            if found.heatmap is not None:
                from .images import load_image

                overlay = found.overlay_jpeg(load_image(self.searcher.store.abspath(hit.index)),
                                             max_side=DETAIL_SIDE)
        except (ClipWidgetsError, OSError) as error:
            self.show_error(error)
            return None
        self.detail.show_explanation(found.to_html(), overlay)
        return found

    def hide_detail(self) -> None:
        """Hide the detail view and drop its image from the widget state."""
        self.detail.hide()

    def on_results(self, callback: Callable[[SearchPanel], None]) -> None:
        """Call `callback(panel)` after every page the panel shows (the embedding map uses this)."""
        self._listeners.append(callback)

    def query_vector(self) -> np.ndarray | None:
        """The unit query vector the current ranking uses (feedback included), or None."""
        request = self._request
        if request is None or self.searcher is None:
            return None
        from .feedback import apply_feedback

        vector, _ = self.searcher.query_vector(self._query_of(request), negative=request.negative)
        return apply_feedback(self.searcher, vector, "", request.positive, request.negative_images, None)[0]

    def ranked_rows(self) -> list[int]:
        """Store rows of the current ranking fetched so far, best first."""
        return self._ranking.rows() if self._ranking is not None else []

    def show_error(self, error: BaseException | str) -> None:
        """Show an error in the status line (in red), in plain words."""
        self.error = str(error)
        self._set_status(self.error, error=True)

    def results_text(self) -> str:
        """The hits shown, as deterministic text (ranks, file names, rounded scores)."""
        if self.error is not None:
            return f"error: {self.error}"
        if self._request is None:
            return "SearchPanel: no search yet"
        return results_text(self.results, self.total)

    @property
    def per_page(self) -> int:
        """How many results a page shows."""
        return int(self.per_page_box.value)

    @property
    def page(self) -> int:
        """The page shown, counting from 0."""
        return self._page

    def __repr__(self) -> str:
        return self.results_text()

    def _repr_mimebundle_(self, **kwargs: Any) -> dict:
        """The widget view plus the full `results_text()` (ipywidgets 8 would cut it at 110 characters).

        ipywidgets 7 displays widgets through `_ipython_display_` instead, with a shortened repr.
        """
        parent = getattr(super(), "_repr_mimebundle_", None)
        bundle = parent(**kwargs) if parent is not None else {}
        bundle["text/plain"] = self.results_text()
        return bundle

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

    def _fetch(self, request: Request, depth: int) -> Any:
        options: dict[str, Any] = {"k": depth, "negative": request.negative, "min_score": request.min_score}
        subset = self._subset(request)
        if subset is not None:
            options["subset"] = subset
        if request.kind == "like" and not (request.positive or request.negative_images):
            return self.searcher.more_like(request.query, **options)
        return self.searcher.search(self._query_of(request), positive=request.positive,
                                    negative_images=request.negative_images, **options)

    def _query_of(self, request: Request) -> Any:
        """What `Searcher.search` ranks by for `request`."""
        if request.kind == "text":
            return request.query
        embeddings = self.searcher.store.image_embeddings()
        if request.kind == "like":
            return embeddings[self.searcher.index_of(request.query)].astype(np.float32)
        text = self.query_box.value.strip()
        return text if text else embeddings[list(request.query)].astype(np.float32).mean(axis=0)

    def _subset(self, request: Request) -> np.ndarray | None:
        masks = []
        if request.kind == "rows":
            if not request.query:
                raise InvalidInputError("No images chosen: select some points on the map first.")
            mask = np.zeros(self.searcher.num_images, dtype=bool)
            mask[list(request.query)] = True
            masks.append(mask)
        if request.label is not None:
            mask = np.zeros(self.searcher.num_images, dtype=bool)
            mask[self.labels.rows(request.label)] = True
            masks.append(mask)
        return np.logical_and.reduce(masks) if masks else None

    # ---- rendering ---------------------------------------------------------------------------

    def _build_controls(self, per_page: int) -> None:
        choices = sorted({*PER_PAGE_CHOICES, per_page})
        self.query_box = widgets.Text(placeholder="Describe the image you want, then press Enter",
                                      continuous_update=False, layout=widgets.Layout(width="34%"))
        self.search_button = widgets.Button(description="Search", button_style="primary",
                                            tooltip="Search for the text in the query box")
        self.negative_box = widgets.Text(placeholder="but not… (optional negative prompt)",
                                         continuous_update=False, layout=widgets.Layout(width="22%"))
        self.per_page_box = widgets.Dropdown(options=choices, value=per_page, description="per page",
                                             style={"description_width": "initial"},
                                             layout=widgets.Layout(width="130px"))
        self.min_score_box = widgets.BoundedFloatText(
            value=MIN_SCORE_OFF, min=MIN_SCORE_OFF, max=1.0, step=0.01, description="min score",
            style={"description_width": "initial"}, layout=widgets.Layout(width="150px"))
        self.refine_button = widgets.Button(description="Refine with marks", disabled=True,
                                            tooltip="Rank again: towards the images marked 'more', "
                                            "away from 'fewer'")
        self.undo_button = widgets.Button(description="Undo mark", disabled=True)
        self.marks_label = widgets.HTML()
        self.label_box = widgets.Dropdown(options=[ALL_LABELS], value=ALL_LABELS, description="label",
                                          layout=widgets.Layout(width="200px", display="none"))
        self.status_line = widgets.HTML()
        self.grid = widgets.GridBox(layout=widgets.Layout(
            grid_template_columns=f"repeat(auto-fill, {CARD_WIDTH_PX}px)", grid_gap="8px"))
        self.previous_button = widgets.Button(description="◀ previous", disabled=True)
        self.next_button = widgets.Button(description="next ▶", disabled=True)
        self.page_label = widgets.HTML()
        self.detail = DetailView(on_close=self._guarded(self.hide_detail),
                                 on_explain=self._guarded(self.explain))
        self.detail_image, self.detail_text = self.detail.image, self.detail.text
        self._detail_position = -1
        self.add_class("clipwidgets-panel")
        self.grid.add_class("clipwidgets-grid")

        self.query_box.observe(self._on_query, names="value")
        for box in (self.negative_box, self.min_score_box, self.label_box):
            box.observe(self._on_refine, names="value")
        self.per_page_box.observe(self._on_per_page, names="value")
        self.search_button.on_click(self._guarded(lambda _: self.search()))
        self.next_button.on_click(self._guarded(lambda _: self.next_page()))
        self.previous_button.on_click(self._guarded(lambda _: self.previous_page()))
        self.refine_button.on_click(self._guarded(lambda _: self.refine()))
        self.undo_button.on_click(self._guarded(lambda _: self.undo_mark()))

        self.children = [
            widgets.HBox([self.query_box, self.search_button, self.negative_box, self.per_page_box,
                          self.min_score_box], layout=widgets.Layout(flex_flow="row wrap")),
            widgets.HBox([self.refine_button, self.undo_button, self.marks_label, self.label_box]),
            self.status_line, self.detail, self.grid,
            widgets.HBox([self.previous_button, self.page_label, self.next_button]),
        ]

    def _render_page(self, page: int) -> None:
        """Show `page` of the kept ranking (fetching deeper when needed); errors go to the status line."""
        try:
            hits = self._ranking.page(page, self.per_page)
        except (ClipWidgetsError, OSError) as error:
            self.show_error(error)
            return
        self.error = None
        self._page, self.results, self.total = page, hits, self._ranking.total
        failures = self._render_cards()
        status = status_text(self.total, self._ranking.elapsed_ms, like=self._like_name(self._request))
        if self._request.kind == "rows":
            status += f" (among {len(self._request.query)} chosen images)"
        if failures:
            self._set_status(f"{status}. {failure_text(failures)}", error=True)
        else:
            self._set_status(status)
        pages = page_count(self.total, self.per_page)
        self.previous_button.disabled = self._page == 0
        self.next_button.disabled = self._page + 1 >= pages
        self.page_label.value = html.escape(page_label(self._page, self.per_page, self.total))
        self._render_marks()
        for listener in self._listeners:
            listener(self)

    def _render_cards(self) -> list[tuple[str, str]]:
        """Fill one card per hit (reusing card widgets); returns (file name, reason) of failed images."""
        while len(self._cards) < len(self.results):
            self._cards.append(Card(len(self._cards), on_like=self._guarded(self._like_position),
                                    on_open=self._guarded(self.show_detail),
                                    on_mark=self._guarded(lambda p, v: self.mark(p, v, position=True))))
        failures = []
        for card, hit in zip(self._cards[:len(self.results)], self.results, strict=True):
            try:
                card.image.value = self.thumbnails.get(hit.index)
            except (ClipWidgetsError, OSError) as error:
                card.image.value = placeholder_jpeg(DEFAULT_SIDE)
                failures.append((PurePosixPath(hit.path).name, str(error)))
            card.text.value = card_html(card_text(hit))
        for card in self._cards[len(self.results):]:
            card.image.value = b""  # hidden cards must not keep old thumbnails in saved notebooks
        self.grid.children = [card.box for card in self._cards[:len(self.results)]]
        return failures

    def _render_marks(self) -> None:
        marks = self.marks
        for card, hit in zip(self._cards, self.results, strict=False):
            card.show_mark(marks.value(hit.index))
        used = (self._request.positive, self._request.negative_images)
        self.refine_button.disabled = (marks.positive, marks.negative) == used
        self.undo_button.disabled = not marks.can_undo
        self.marks_label.value = html.escape(f"marked: {len(marks.positive)} more, {len(marks.negative)} "
                                             "fewer" if len(marks) else "")

    def _like_position(self, position: int) -> None:
        self.more_like(self.results[position].index)

    def _like_name(self, request: Request) -> str | None:
        if request.kind != "like":
            return None
        if isinstance(request.query, str):
            return PurePosixPath(request.query).name
        return PurePosixPath(self.searcher.store.abspath(request.query)).name

    def _set_status(self, text: str, *, error: bool = False) -> None:
        self.status = text
        style = f' style="color: {_ERROR_COLOR}"' if error else ""
        self.status_line.value = f"<span{style}>{html.escape(text)}</span>"

    def _min_score(self) -> float | None:
        value = float(self.min_score_box.value)
        return None if value <= MIN_SCORE_OFF else value

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

    def _guarded(self, action: Callable[..., Any]) -> Callable[..., None]:
        """Wrap a UI callback so that no exception becomes a traceback in the notebook."""
        def run(*args: Any) -> None:
            try:
                action(*args)
            except Exception as error:  # a bug must still not dump a traceback into the page
                _log.exception("SearchPanel callback failed")
                self.show_error(f"Unexpected error ({type(error).__name__}): {error}")
        return run

    def _quietly(self) -> _Quiet:
        return _Quiet(self)


class _Quiet:
    """Context manager: change the panel's boxes from code without triggering searches."""

    def __init__(self, panel: SearchPanel) -> None:
        self.panel = panel

    def __enter__(self) -> None:
        self.panel._quiet = True

    def __exit__(self, *exc: object) -> None:
        self.panel._quiet = False


def _as_searcher(store_or_searcher: Any, encoder: Any) -> Searcher:
    if isinstance(store_or_searcher, Searcher):
        return store_or_searcher
    if store_or_searcher is None:
        raise InvalidInputError("No store given: pass SearchPanel a Searcher, an EmbeddingStore or the "
                                "path of a store file built with `clipwidgets index`.")
    return Searcher(store_or_searcher, encoder)
