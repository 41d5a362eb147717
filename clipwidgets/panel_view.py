"""PanelView: the SearchPanel's widgets and how a page of results is drawn (no searching here).

SearchPanel (clipwidgets.widgets) adds the searching; this base class builds the controls, renders
the cards, the pager, the marks and the status line, and keeps callbacks from raising into the page.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any

import ipywidgets as widgets

from .errors import ClipWidgetsError
from .panel_parts import CARD_WIDTH_PX, Card, DetailView
from .panel_text import card_html, card_text, failure_text, page_count, page_label, results_text, status_text
from .thumbnails import DEFAULT_SIDE, placeholder_jpeg

__all__ = ["ALL_LABELS", "MIN_SCORE_OFF", "PER_PAGE_CHOICES", "PanelView"]

PER_PAGE_CHOICES = (12, 24, 48, 96)
MIN_SCORE_OFF = -1.0
ALL_LABELS = "all labels"
_ERROR_COLOR = "#b00020"
_log = logging.getLogger("clipwidgets.widgets")


class PanelView(widgets.VBox):
    """The panel's widgets and rendering; state (`results`, `_ranking`, `_request`, ...) is set by
    the SearchPanel that derives from it."""

    results: list[Any]
    total: int
    status: str
    error: str | None
    searcher: Any
    thumbnails: Any
    _ranking: Any  # a KeptRanking once a search ran
    _request: Any
    _page: int
    _cards: list[Card]
    _listeners: list[Callable[[Any], None]]
    _quiet: bool

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
        self.status_line.add_class("clipwidgets-status")

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

    def _like_name(self, request: Any) -> str | None:
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

    def __init__(self, panel: PanelView) -> None:
        self.panel = panel

    def __enter__(self) -> None:
        self.panel._quiet = True

    def __exit__(self, *exc: object) -> None:
        self.panel._quiet = False


