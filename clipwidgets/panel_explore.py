"""The SearchPanel's exploring actions: relevance-feedback marks, why-this-result, the label filter,
and the hooks the embedding map uses. A mixin of clipwidgets.widgets.SearchPanel."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ClipWidgetsError
from .feedback import FeedbackMarks
from .panel_parts import DETAIL_SIDE
from .panel_view import ALL_LABELS

if TYPE_CHECKING:
    from .widgets import SearchPanel

__all__ = ["ExploreActions"]


class ExploreActions:
    """Marks, feedback, explain, labels and result hooks for a SearchPanel (which sets these)."""

    results: list[Any]
    searcher: Any
    labels: Any
    detail: Any
    label_box: Any
    refine_button: Any
    undo_button: Any
    marks_label: Any
    _request: Any
    _ranking: Any
    _cards: list[Any]
    _marks: dict[tuple, FeedbackMarks]
    _listeners: list[Callable[[Any], None]]
    _detail_position: int
    show_error: Callable[..., None]
    show_detail: Callable[[int], None]
    _show: Callable[[Any], None]
    _query_of: Callable[[Any], Any]
    _quietly: Callable[[], Any]
    _render_marks: Callable[[], None]

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
        marks = self.marks
        if marks is not None:
            self._show(replace(self._request, positive=marks.positive, negative_images=marks.negative))
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

    def explain(self, position: int | None = None, *, heatmap: bool = True) -> Any:
        """Why the result at `position` (default: the one in the detail view) ranks where it does:
        shown in the detail view and returned (clipwidgets.explain.Explanation)."""
        position = self._detail_position if position is None else position
        if self.detail.layout.display == "none" or self._detail_position != position:
            self.show_detail(position)
            if self.detail.layout.display == "none":
                return None
        hit = self.results[position]
        try:
            found = self.searcher.explain(hit, heatmap=heatmap)  # the hit carries its query and marks
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

