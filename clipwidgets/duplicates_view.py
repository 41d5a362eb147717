"""DuplicateReview: a panel to walk through groups of near-duplicate images, one group at a time."""

from __future__ import annotations

import html
from pathlib import PurePosixPath
from typing import Any

import ipywidgets as widgets

from .duplicates import DEFAULT_THRESHOLD, find_duplicates
from .errors import ClipWidgetsError
from .panel_parts import CARD_WIDTH_PX
from .store import EmbeddingStore
from .thumbnails import DEFAULT_SIDE, ThumbnailCache, placeholder_jpeg

__all__ = ["DuplicateReview"]


class DuplicateReview(widgets.VBox):
    """Thumbnails and paths of one group of near-duplicates, with previous / next group.

    `store` is an EmbeddingStore or a store path; `groups` (lists of relative paths, as
    `find_duplicates` returns) are found with `threshold` when not given.
    """

    def __init__(self, store: EmbeddingStore | str, groups: list[list[str]] | None = None, *,
                 threshold: float = DEFAULT_THRESHOLD, thumbnails: ThumbnailCache | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.store = store if isinstance(store, EmbeddingStore) else EmbeddingStore.open(store)
        self.groups = groups if groups is not None else find_duplicates(self.store, threshold)
        self.thumbnails = thumbnails or ThumbnailCache(self.store)
        self.group = 0
        self.status = widgets.HTML()
        self.grid = widgets.GridBox(layout=widgets.Layout(
            grid_template_columns=f"repeat(auto-fill, {CARD_WIDTH_PX}px)", grid_gap="8px"))
        self.previous_button = widgets.Button(description="◀ previous group")
        self.next_button = widgets.Button(description="next group ▶")
        self.previous_button.on_click(lambda _: self.show_group(self.group - 1))
        self.next_button.on_click(lambda _: self.show_group(self.group + 1))
        self.add_class("clipwidgets-duplicates")
        self.children = [widgets.HBox([self.previous_button, self.status, self.next_button]), self.grid]
        self.show_group(0)

    def show_group(self, number: int) -> None:
        """Show group `number` (from 0; clamped to the groups there are)."""
        if not self.groups:
            self.status.value = "no near-duplicates found"
            self.grid.children = ()
            self.previous_button.disabled = self.next_button.disabled = True
            return
        self.group = max(0, min(number, len(self.groups) - 1))
        paths = self.groups[self.group]
        self.status.value = html.escape(f"group {self.group + 1} of {len(self.groups)}: {len(paths)} images")
        self.grid.children = [self._card(path) for path in paths]
        self.previous_button.disabled = self.group == 0
        self.next_button.disabled = self.group + 1 >= len(self.groups)

    def _card(self, path: str) -> widgets.VBox:
        try:
            image = self.thumbnails.get(self.store.index_of(path))
        except (ClipWidgetsError, OSError):
            image = placeholder_jpeg(DEFAULT_SIDE)
        label = widgets.HTML(f'<span title="{html.escape(path, quote=True)}" style="font-size: 12px">'
                             f"{html.escape(PurePosixPath(path).name)}</span>")
        return widgets.VBox([widgets.Image(value=image, format="jpeg"), label],
                            layout=widgets.Layout(width=f"{CARD_WIDTH_PX}px", border="1px solid #ddd",
                                                  padding="4px", align_items="center"))
