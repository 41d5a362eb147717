"""The widgets the SearchPanel is built from: a result card (with feedback marks) and the detail view
(with "why this result?"). They hold no search logic: the panel passes callbacks in."""

from __future__ import annotations

from collections.abc import Callable

import ipywidgets as widgets

from .thumbnails import DEFAULT_SIDE

__all__ = ["CARD_WIDTH_PX", "DETAIL_SIDE", "Card", "DetailView"]

CARD_WIDTH_PX = DEFAULT_SIDE + 24
DETAIL_SIDE = 512


def _small() -> widgets.Layout:
    """A fresh Layout per button: a widget shared between panels belongs to the session that made it
    first (in the app each session has its own widget models), so no Layout is shared."""
    return widgets.Layout(width="auto")


class Card:
    """One result: thumbnail, label, "More like this" / "open", and the marks "more like this one"
    (+1) / "fewer like this" (-1). `on_mark(position, value)` gets 1, -1 or 0 (unmarked)."""

    def __init__(self, position: int, *, on_like: Callable[[int], None], on_open: Callable[[int], None],
                 on_mark: Callable[[int, int], None]) -> None:
        self.position = position
        self.image = widgets.Image(format="jpeg", layout=widgets.Layout(max_width=f"{DEFAULT_SIDE}px"))
        self.text = widgets.HTML()
        like = widgets.Button(description="More like this", tooltip="Find images like this one",
                              layout=_small())
        detail = widgets.Button(description="open", tooltip="Show the large image, path and captions",
                                layout=_small())
        self.relevant = widgets.ToggleButton(description="more", icon="thumbs-up", tooltip="Mark: more "
                                             "like this one (used by Refine)", layout=_small())
        self.irrelevant = widgets.ToggleButton(description="fewer", icon="thumbs-down", tooltip="Mark: "
                                               "fewer like this (used by Refine)", layout=_small())
        self.relevant.add_class("clipwidgets-mark-relevant")
        self.irrelevant.add_class("clipwidgets-mark-irrelevant")
        self._quiet = False
        like.on_click(lambda _: on_like(self.position))
        detail.on_click(lambda _: on_open(self.position))
        self.relevant.observe(lambda change: self._marked(on_mark, 1, change["new"]), names="value")
        self.irrelevant.observe(lambda change: self._marked(on_mark, -1, change["new"]), names="value")
        self.box = widgets.VBox([self.image, self.text, widgets.HBox([like, detail]),
                                 widgets.HBox([self.relevant, self.irrelevant])],
                                layout=widgets.Layout(width=f"{CARD_WIDTH_PX}px", padding="4px",
                                                      border="1px solid #ddd", align_items="center"))
        self.box.add_class("clipwidgets-card")

    def show_mark(self, value: int) -> None:
        """Set the toggles to `value` (1, -1 or 0) without calling `on_mark`."""
        self._quiet = True
        try:
            self.relevant.value, self.irrelevant.value = value > 0, value < 0
        finally:
            self._quiet = False
        borders = {1: "2px solid #2e7d32", -1: "2px solid #b00020"}
        self.box.layout.border = borders.get(value, "1px solid #ddd")

    def _marked(self, on_mark: Callable[[int, int], None], value: int, pressed: bool) -> None:
        if not self._quiet:
            on_mark(self.position, value if pressed else 0)


class DetailView(widgets.HBox):
    """Large image, text, "why this result?" (scores and a heat map over the image) and close."""

    def __init__(self, *, on_close: Callable[[], None], on_explain: Callable[[], None]) -> None:
        self.image = widgets.Image(format="jpeg", layout=widgets.Layout(max_width=f"{DETAIL_SIDE}px"))
        self.text = widgets.HTML()
        self.explanation = widgets.HTML()
        close = widgets.Button(description="close", tooltip="Hide the detail view")
        why = widgets.Button(description="why this result?", tooltip="Scores per query part, best "
                             "caption, and a heat map of the regions that match (re-encodes the image)")
        close.on_click(lambda _: on_close())
        why.on_click(lambda _: on_explain())
        self.explanation.add_class("clipwidgets-explanation")
        side = widgets.VBox([self.text, widgets.HBox([why, close]), self.explanation])
        super().__init__([self.image, side],
                         layout=widgets.Layout(display="none", border="1px solid #ccc", padding="8px"))
        self.add_class("clipwidgets-detail")

    def show(self, image: bytes, text: str) -> None:
        self.image.value, self.text.value, self.explanation.value = image, text, ""
        self.layout.display = "flex"

    def show_explanation(self, text: str, overlay: bytes | None) -> None:
        """Put the explanation under the text and, when there is one, the heat map over the image."""
        self.explanation.value = text
        if overlay is not None:
            self.image.value = overlay

    def hide(self) -> None:
        self.layout.display = "none"
        self.image.value = b""
        self.explanation.value = ""

