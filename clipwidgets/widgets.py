"""SearchPanel: a thin ipywidgets view over a Searcher, made of core widgets only.

Core widgets (no custom front-end code) keep the panel working wherever notebooks run:
JupyterLab, Notebook 7, VS Code, Colab (ipywidgets 7), Binder and Voila. The logic that needs no
widget (paging, status lines, card text) lives in plain functions below the class.
"""

from __future__ import annotations

import html
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import ipywidgets as widgets

from .errors import ClipWidgetsError, InvalidInputError, StoreError
from .searcher import Searcher
from .store import EmbeddingStore
from .thumbnails import DEFAULT_SIDE, ThumbnailCache, disk_cache_dir, placeholder_jpeg
from .types import EncoderLike, PathLike

__all__ = [
    "CardText", "DETAIL_SIDE", "MIN_SCORE_OFF", "PER_PAGE_CHOICES", "Request", "SearchPanel", "card_html",
    "card_text", "detail_html", "failure_text", "page_count", "page_label", "ready_text", "results_text",
    "status_text"
]

PER_PAGE_CHOICES = (12, 24, 48, 96)
DETAIL_SIDE = 512
MIN_SCORE_OFF = -1.0
_CARD_WIDTH_PX = DEFAULT_SIDE + 24
_ERROR_COLOR = "#b00020"
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Request:
    """What the panel is showing: a text query or "more like" one stored image."""

    kind: str  # "text" or "like"
    query: str | int
    negative: str | None = None
    min_score: float | None = None


@dataclass(frozen=True)
class CardText:
    """The words on one result card."""

    name: str
    score: str
    captions: tuple[str, ...]


class SearchPanel(widgets.VBox):
    """Search a store from a notebook: query box, result grid, paging, "More like this", details.

    `store_or_searcher` is a Searcher, an EmbeddingStore or a store path; `encoder` is used for text
    queries (see `Searcher`). Errors never escape as tracebacks: they appear in the status line.
    Drive it from code with `search()`, `more_like()`, `next_page()`, `previous_page()`, `show_detail()`;
    read `results`, `status`, `error` and `results_text()`.
    """

    def __init__(self, store_or_searcher: Searcher | EmbeddingStore | PathLike | None,
                 encoder: EncoderLike | None = None, *, per_page: int = 24,
                 thumbnails: ThumbnailCache | None = None, disk_cache: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.results: list[Any] = []
        self.total = 0
        self.status = ""
        self.error: str | None = None
        self._request: Request | None = None
        self._page = 0
        self._cards: list[_Card] = []
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
        """Search for `text` (default: the query box), optionally pushing away from `negative`."""
        with self._quietly():
            if text is not None:
                self.query_box.value = text
            if negative is not None:
                self.negative_box.value = negative
        query = self.query_box.value.strip()
        if not query:
            self._set_status("Type what you are looking for (e.g. 'a dog on a beach') and press Enter.")
            return self.results
        self._run(Request("text", query, self.negative_box.value.strip() or None, self._min_score()), 0)
        return self.results

    def more_like(self, index_or_relpath: int | str) -> list[Any]:
        """Show the images most similar to one stored image (a row index or a relative path),
        pushed away from the negative prompt when there is one."""
        self._run(Request("like", index_or_relpath, self.negative_box.value.strip() or None,
                          self._min_score()), 0)
        return self.results

    def next_page(self) -> list[Any]:
        """Show the next page of the current search (no-op on the last page)."""
        if self._request is not None and self._page + 1 < page_count(self.total, self.per_page):
            self._run(self._request, self._page + 1)
        return self.results

    def previous_page(self) -> list[Any]:
        """Show the previous page of the current search (no-op on the first page)."""
        if self._request is not None and self._page > 0:
            self._run(self._request, self._page - 1)
        return self.results

    def show_detail(self, position: int) -> None:
        """Show the detail view (large image, full path, captions, score) of the result at `position`
        on the page (counting from 0)."""
        if not 0 <= position < len(self.results):
            self.show_error(f"There is no result at position {position}: the page shows "
                            f"{len(self.results)} results (positions 0 to {len(self.results) - 1}).")
            return
        hit = self.results[position]
        assert self.searcher is not None and self.thumbnails is not None  # there are results: a store is open
        try:
            path = self.searcher.store.abspath(hit.index)
            self.detail_image.value = self.thumbnails.get(hit.index, max_side=DETAIL_SIDE)
        except (ClipWidgetsError, OSError) as error:
            self.detail_image.value = placeholder_jpeg(DETAIL_SIDE)
            self.show_error(error)
            path = hit.path
        self.detail_text.value = detail_html(hit, str(path))
        self.detail.layout.display = "flex"

    def hide_detail(self) -> None:
        """Hide the detail view and drop its image from the widget state."""
        self.detail.layout.display = "none"
        self.detail_image.value = b""

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
        self.status_line = widgets.HTML()
        self.grid = widgets.GridBox(layout=widgets.Layout(
            grid_template_columns=f"repeat(auto-fill, {_CARD_WIDTH_PX}px)", grid_gap="8px"))
        self.previous_button = widgets.Button(description="◀ previous", disabled=True)
        self.next_button = widgets.Button(description="next ▶", disabled=True)
        self.page_label = widgets.HTML()
        self.detail_image = widgets.Image(format="jpeg", layout=widgets.Layout(max_width=f"{DETAIL_SIDE}px"))
        self.detail_text = widgets.HTML()
        close = widgets.Button(description="close", tooltip="Hide the detail view")
        self.detail = widgets.HBox([self.detail_image, widgets.VBox([self.detail_text, close])],
                                   layout=widgets.Layout(display="none", border="1px solid #ccc",
                                                         padding="8px"))
        self.add_class("clipwidgets-panel")
        self.grid.add_class("clipwidgets-grid")
        self.detail.add_class("clipwidgets-detail")

        self.query_box.observe(self._on_query, names="value")
        self.negative_box.observe(self._on_refine, names="value")
        self.per_page_box.observe(self._on_refine, names="value")
        self.min_score_box.observe(self._on_refine, names="value")
        self.search_button.on_click(self._guarded(lambda _: self.search()))
        self.next_button.on_click(self._guarded(lambda _: self.next_page()))
        self.previous_button.on_click(self._guarded(lambda _: self.previous_page()))
        close.on_click(self._guarded(lambda _: self.hide_detail()))

        self.children = [
            widgets.HBox([self.query_box, self.search_button, self.negative_box, self.per_page_box,
                          self.min_score_box], layout=widgets.Layout(flex_flow="row wrap")),
            self.status_line, self.detail, self.grid,
            widgets.HBox([self.previous_button, self.page_label, self.next_button]),
        ]

    def _run(self, request: Request, page: int) -> None:
        """Run `request` for `page` and render it; errors go to the status line."""
        if self.searcher is None:
            return
        offset = page * self.per_page
        try:
            if request.kind == "text":
                found = self.searcher.search(request.query, k=self.per_page, offset=offset,
                                             negative=request.negative, min_score=request.min_score)
            else:
                found = self.searcher.more_like(request.query, k=self.per_page, offset=offset,
                                                negative=request.negative, min_score=request.min_score)
        except (ClipWidgetsError, OSError) as error:
            self.show_error(error)
            return
        self.error = None
        self._request, self._page = request, page
        self.results, self.total = list(found), int(found.total)
        failures = self._render_cards()
        status = status_text(self.total, found.elapsed_ms, like=self._like_name(request))
        if failures:
            self._set_status(f"{status}. {failure_text(failures)}", error=True)
        else:
            self._set_status(status)
        self._render_pager()

    def _render_cards(self) -> list[tuple[str, str]]:
        """Fill one card per hit (reusing card widgets); returns (file name, reason) of failed images."""
        while len(self._cards) < len(self.results):
            self._cards.append(self._new_card(len(self._cards)))
        failures = []
        for card, hit in zip(self._cards[:len(self.results)], self.results, strict=True):
            assert self.thumbnails is not None  # results come from an open store
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

    def _render_pager(self) -> None:
        pages = page_count(self.total, self.per_page)
        self.previous_button.disabled = self._page == 0
        self.next_button.disabled = self._page + 1 >= pages
        self.page_label.value = html.escape(page_label(self._page, self.per_page, self.total))

    def _new_card(self, position: int) -> _Card:
        image = widgets.Image(format="jpeg", layout=widgets.Layout(max_width=f"{DEFAULT_SIDE}px"))
        text = widgets.HTML()
        like = widgets.Button(description="More like this", tooltip="Find images like this one",
                              layout=widgets.Layout(width="auto"))
        detail = widgets.Button(description="open", tooltip="Show the large image, path and captions",
                                layout=widgets.Layout(width="auto"))
        like.on_click(self._guarded(lambda _: self.more_like(self.results[position].index)))
        detail.on_click(self._guarded(lambda _: self.show_detail(position)))
        box = widgets.VBox([image, text, widgets.HBox([like, detail])],
                           layout=widgets.Layout(width=f"{_CARD_WIDTH_PX}px", padding="4px",
                                                 border="1px solid #ddd", align_items="center"))
        box.add_class("clipwidgets-card")
        return _Card(box, image, text)

    def _like_name(self, request: Request) -> str | None:
        if request.kind != "like":
            return None
        if isinstance(request.query, str):
            return PurePosixPath(request.query).name
        assert self.searcher is not None  # a request was made: a store is open
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

    def _on_refine(self, change: dict) -> None:
        if self._quiet or self._request is None:
            return
        request = self._request
        if request.kind == "text":
            self._guarded(lambda _: self.search())(change)
        else:
            self._guarded(lambda _: self.more_like(request.query))(change)

    def _guarded(self, action: Callable[[Any], Any]) -> Callable[[Any], None]:
        """Wrap a UI callback so that no exception becomes a traceback in the notebook."""
        def run(event: Any) -> None:
            try:
                action(event)
            except Exception as error:  # a bug must still not dump a traceback into the page
                _log.exception("SearchPanel callback failed")
                self.show_error(f"Unexpected error ({type(error).__name__}): {error}")
        return run

    def _quietly(self) -> _Quiet:
        return _Quiet(self)


@dataclass
class _Card:
    box: widgets.VBox
    image: widgets.Image
    text: widgets.HTML


class _Quiet:
    """Context manager: change the panel's boxes from code without triggering searches."""

    def __init__(self, panel: SearchPanel) -> None:
        self.panel = panel

    def __enter__(self) -> None:
        self.panel._quiet = True

    def __exit__(self, *exc: object) -> None:
        self.panel._quiet = False


def _as_searcher(store_or_searcher: Searcher | EmbeddingStore | PathLike | None,
                 encoder: EncoderLike | None) -> Searcher:
    if isinstance(store_or_searcher, Searcher):
        return store_or_searcher
    if store_or_searcher is None:
        raise InvalidInputError("No store given: pass SearchPanel a Searcher, an EmbeddingStore or the "
                                "path of a store file built with `clipwidgets index`.")
    return Searcher(store_or_searcher, encoder)


# ---- pure functions: everything the panel shows, computed without widgets --------------------

def page_count(total: int, per_page: int) -> int:
    """Number of pages for `total` results (at least 1)."""
    return max(1, math.ceil(total / per_page))


def page_label(page: int, per_page: int, total: int) -> str:
    """'25–48 of 120' for page 1 (counting from 0) with 24 per page; 'no results' when empty."""
    if total == 0:
        return "no results"
    first = page * per_page + 1
    return f"{first}–{min(total, first + per_page - 1)} of {total}"


def ready_text(num_images: int) -> str:
    """The status line before the first search."""
    return f"{num_images} images indexed. Type a query and press Enter."


def status_text(total: int, elapsed_ms: float, *, like: str | None = None) -> str:
    """'24 results in 18 ms', with the image a "more like this" search started from."""
    noun = "result" if total == 1 else "results"
    text = f"{total} {noun} in {elapsed_ms:.0f} ms"
    return f"{text} (more like {like})" if like else text


def failure_text(failures: Sequence[tuple[str, str]]) -> str:
    """One sentence naming the images that could not be shown and why (the first reason)."""
    names = ", ".join(name for name, _ in failures[:3]) + (" …" if len(failures) > 3 else "")
    count = len(failures)
    noun = "image" if count == 1 else "images"
    return f"{count} {noun} could not be shown ({names}): {failures[0][1]}"


def card_text(hit: Any) -> CardText:
    """Name, rounded score and captions of one hit."""
    return CardText(PurePosixPath(hit.path).name, f"{hit.score:.3f}", tuple(hit.captions or ()))


def card_html(card: CardText) -> str:
    """A card's label: score and file name, first caption below, all captions as a tooltip."""
    tooltip = html.escape("\n".join(card.captions) or card.name, quote=True)
    caption = (f'<div style="font-size: 11px; line-height: 1.2; color: #555">'
               f'{html.escape(_shorten(card.captions[0], 90))}</div>') if card.captions else ""
    return (f'<div class="clipwidgets-card-text" title="{tooltip}" style="width: {DEFAULT_SIDE}px; '
            f'overflow: hidden"><b>{card.score}</b> '
            f'<span class="clipwidgets-name" style="font-size: 12px">{html.escape(card.name)}</span>'
            f"{caption}</div>")


def detail_html(hit: Any, full_path: str) -> str:
    """The detail view's text: file name, score, full path and every caption."""
    captions = "".join(f"<li>{html.escape(text)}</li>" for text in hit.captions or ())
    return (f"<h3>{html.escape(PurePosixPath(hit.path).name)}</h3>"
            f"<p><b>score</b> {hit.score:.4f}</p>"
            f'<p><b>path</b> <code style="word-break: break-all">{html.escape(full_path)}</code></p>'
            + (f"<p><b>captions</b></p><ul>{captions}</ul>" if captions else "<p>no captions</p>"))


def results_text(hits: Sequence[Any], total: int) -> str:
    """Deterministic plain text of a page of hits: rank, rounded score, relative path."""
    lines = [f"{len(hits)} of {total} results"]
    lines += [f"{hit.rank:>4}  {hit.score:.3f}  {hit.path}" for hit in hits]
    return "\n".join(lines)


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
