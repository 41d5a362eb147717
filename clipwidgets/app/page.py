"""The page Solara renders for each browser session: a new SearchPanel over the shared searcher.

`serve()` calls `install(shared)` before the server starts; Solara then runs `Page` once in each
session's virtual kernel. While a background build runs, a per-session thread updates the
progress line every `PROGRESS_EVERY_S` seconds, inside that session's kernel context.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import solara
from solara.server import kernel_context

from .shared import SharedSearch

__all__ = ["PROGRESS_EVERY_S", "Page", "install"]

PROGRESS_EVERY_S = 1.0
_shared: list[SharedSearch] = []


def install(shared: SharedSearch) -> None:
    """Make `shared` the searcher every new session uses."""
    _shared[:] = [shared]


def _current() -> SharedSearch:
    if not _shared:
        raise RuntimeError("clipwidgets.app.page.install(shared) was not called before serving")
    return _shared[0]


def _follow_progress(view: object) -> Callable[[], None]:
    """Keep `view`'s progress line current while the build runs; returns the stop function."""
    shared = _current()
    if not shared.building():
        return lambda: None
    context = kernel_context.get_current_context()
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(PROGRESS_EVERY_S) and not context.closed_event.is_set():
            with context:
                shared.show_progress(view)
            if not shared.building():
                return

    threading.Thread(target=loop, name=f"clipwidgets-progress-{context.id[:8]}", daemon=True).start()
    return stop.set


@solara.component
def Page() -> None:
    """One session: the progress line and a SearchPanel of its own."""
    view = solara.use_memo(lambda: _current().new_view(), dependencies=[])
    solara.use_effect(lambda: _follow_progress(view), dependencies=[])
    solara.display(view)
