"""ExploreTools: the embedding map, near-duplicates and zero-shot labels beside a SearchPanel, in
three sections opened on demand (the app shows them under its panel; a notebook can too).

Each section is built the first time it is opened: the map projects the store and the duplicates
section scans it, work a session that never opens them does not pay for.
"""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as widgets

from .duplicates import DEFAULT_THRESHOLD
from .errors import ClipWidgetsError

__all__ = ["SECTIONS", "ExploreTools"]

SECTIONS = ("map", "near-duplicates", "labels")
_DEFAULT_LABELS = "dog, cat, person, beach, car"


class ExploreTools(widgets.Accordion):
    """Map, near-duplicates and labels for `panel` (a SearchPanel with a store), each built when first
    opened (`show_section(name)` opens one from code); `map`, `duplicates` and `labels` hold what
    was built."""

    def __init__(self, panel: Any, *, thumbnails: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.panel = panel
        self.thumbnails = thumbnails
        self.map: Any = None
        self.duplicates: Any = None
        self.labels: Any = None
        self._boxes = [widgets.VBox() for _ in SECTIONS]
        self.children = self._boxes
        for number, name in enumerate(SECTIONS):
            self.set_title(number, name)
        self.selected_index = None
        self.add_class("clipwidgets-explore")
        self.observe(self._on_open, names="selected_index")

    def show_section(self, name: str) -> widgets.VBox:
        """Open section `name` ("map", "near-duplicates" or "labels"), building it if needed."""
        if name not in SECTIONS:
            raise ValueError(f"section {name!r}: use one of {', '.join(SECTIONS)}")
        self.set_trait("selected_index", SECTIONS.index(name))
        return self._boxes[SECTIONS.index(name)]

    def _on_open(self, change: dict) -> None:
        number = change.get("new")
        if number is None or self._boxes[number].children:
            return
        box = self._boxes[number]
        box.children = [widgets.HTML("<i>working…</i>")]
        try:
            box.children = self._build(SECTIONS[number])
        except (ClipWidgetsError, OSError) as error:
            box.children = [_message(str(error))]

    def _build(self, name: str) -> list[widgets.Widget]:
        if name == "map":
            from .embedding_map import EmbeddingMap

            self.map = EmbeddingMap(self.panel, color_by="cluster")
            return [widgets.HTML("<small>lasso or box on the map: those images go to the panel; the "
                                 "panel's page is drawn large</small>"), self.map.widget]
        if name == "near-duplicates":
            threshold = widgets.BoundedFloatText(value=DEFAULT_THRESHOLD, min=0.5, max=1.0, step=0.005,
                                                 description="cosine ≥", layout=widgets.Layout(width="180px"))
            find = widgets.Button(description="find near-duplicates")
            place = widgets.VBox()
            find.on_click(lambda _: self._show_duplicates(place, threshold.value))
            return [widgets.HBox([threshold, find]), place]
        text = widgets.Text(value=_DEFAULT_LABELS, description="labels",
                            layout=widgets.Layout(width="420px"))
        apply = widgets.Button(description="label images")
        status = widgets.HTML()
        apply.on_click(lambda _: self._label(text.value, status))
        return [widgets.HBox([text, apply]), status]

    def _show_duplicates(self, place: widgets.VBox, threshold: float) -> None:
        from .duplicates_view import DuplicateReview

        place.children = [widgets.HTML("<i>searching…</i>")]
        try:
            self.duplicates = DuplicateReview(self.panel.searcher.store, threshold=threshold,
                                              thumbnails=self.thumbnails)
        except (ClipWidgetsError, OSError) as error:
            place.children = [_message(str(error))]
            return
        place.children = [self.duplicates]

    def _label(self, text: str, status: widgets.HTML) -> None:
        names = [name.strip() for name in text.split(",") if name.strip()]
        if len(names) < 2:
            status.value = _message("give two labels or more, separated by commas").value
            return
        try:
            self.labels = self.panel.searcher.classify(names)
        except ClipWidgetsError as error:
            status.value = _message(str(error)).value
            return
        self.panel.set_labels(self.labels)
        counts = ", ".join(f"{html.escape(name)}: {count}" for name, count in self.labels.counts().items())
        status.value = f"<small>{counts}. Choose a label in the panel's <b>label</b> menu.</small>"


def _message(text: str) -> widgets.HTML:
    return widgets.HTML(f'<span style="color: #b00">{html.escape(text)}</span>')
