"""What every session of the app shares: one encoder, one read-only searcher, one thumbnail cache.

Sessions call into them from their own threads, so the searcher and the thumbnail cache serialise
their calls with a lock (on two cores, running queries one at a time also keeps each one fast);
the text encodings that queries need are made before the lock, in batches across sessions. A
refresher thread reloads the searcher when the store changes, so results grow while a background
build commits. `SharedSearch.new_view()` makes one session's widgets: the same `SearchPanel` as in
notebooks, below a line that reports the indexing progress while a build runs.
"""

from __future__ import annotations

import contextlib
import html
import importlib
import importlib.util
import logging
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import numpy as np

from ..bootstrap import BackgroundBuild
from ..errors import ClipWidgetsError
from ..query import parse_negative, parse_query
from ..searcher import Searcher
from ..store import EmbeddingStore
from ..thumbnails import ThumbnailCache, disk_cache_dir
from ..widgets import SearchPanel

__all__ = ["BatchedTexts", "LockedSearcher", "LockedThumbnails", "SharedSearch", "progress_text"]

_log = logging.getLogger(__name__)


class BatchedTexts:
    """An encoder whose text encodings, asked for at the same time by several sessions, run as one batch.

    On a CPU, a batch of texts costs far less than the same texts one by one, so under load the
    queries of many sessions share one model call, made on one intra-op thread (`threads`).
    `prefetch(texts)` waits for their encodings (made by the batch thread); `encode_texts` then
    answers from the remembered vectors. Everything else is the wrapped encoder's.
    """

    def __init__(self, encoder: Any, *, max_batch: int = 32, remember: int = 1024,
                 threads: int = 1) -> None:
        self.encoder = encoder
        self.max_batch = max_batch
        self.threads = threads
        self.remember = remember
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._requests: queue.SimpleQueue[tuple[list[str], Future]] = queue.SimpleQueue()
        threading.Thread(target=self._batch_loop, name="clipwidgets-texts", daemon=True).start()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.encoder, name)

    def prefetch(self, texts: list[str]) -> None:
        """Encode the `texts` not remembered yet, in a batch with other sessions' texts."""
        with self._lock:
            missing = [text for text in dict.fromkeys(texts) if text not in self._vectors]
        if missing:
            done: Future = Future()
            self._requests.put((missing, done))
            done.result()

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        self.prefetch(list(texts))
        with self._lock:
            found = [self._vectors.get(text) for text in texts]
        if any(vector is None for vector in found):  # forgotten meanwhile: encode directly
            return self.encoder.encode_texts(list(texts))
        return np.stack(found)  # type: ignore[arg-type]

    def _batch_loop(self) -> None:
        import torch

        # Intra-op threads are per thread: only this one is limited. Under concurrent load (other
        # sessions, a background build, other programs) one thread encodes a text 10-20x faster
        # than two on a 2-core machine (83 ms vs 1-2 s measured at load 5-10), and batches keep
        # the throughput.
        torch.set_num_threads(self.threads)
        while True:
            batch = [self._requests.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._requests.get_nowait())
                except queue.Empty:
                    break
            texts = list(dict.fromkeys(text for wanted, _ in batch for text in wanted))
            try:
                vectors = self.encoder.encode_texts(texts)
            except BaseException as error:  # the sessions that asked get the error
                for _, done in batch:
                    done.set_exception(error)
                continue
            with self._lock:
                for text, vector in zip(texts, vectors, strict=True):
                    self._vectors[text] = vector
                    self._vectors.move_to_end(text)
                while len(self._vectors) > self.remember:
                    self._vectors.popitem(last=False)
            for _, done in batch:
                done.set_result(None)


class LockedSearcher(Searcher):
    """A Searcher whose queries and reloads run one at a time, so threads can share it. The texts a
    query needs are encoded before taking the lock, batched with other sessions' (`BatchedTexts`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.lock = threading.RLock()
        super().__init__(*args, **kwargs)

    def search(self, query: Any, *args: Any, negative: str | None = None, **kwargs: Any) -> Any:
        self._prefetch(query, negative)
        with self.lock:
            return super().search(query, *args, negative=negative, **kwargs)

    def more_like(self, *args: Any, negative: str | None = None, **kwargs: Any) -> Any:
        self._prefetch(None, negative)
        with self.lock:
            return super().more_like(*args, negative=negative, **kwargs)

    def _prefetch(self, query: Any, negative: str | None) -> None:
        prefetch = getattr(self.encoder, "prefetch", None)
        if prefetch is None:
            return
        with contextlib.suppress(Exception):  # a bad query or model: the search itself reports it
            texts = [part.text for part in parse_query(query)] if isinstance(query, str) else []
            prefetch(texts + [part.text for part in parse_negative(negative)])

    def refresh(self) -> bool:
        with self.lock:
            return super().refresh()


class LockedThumbnails(ThumbnailCache):
    """A ThumbnailCache that threads can share (one memory LRU for every session)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def get(self, *args: Any, **kwargs: Any) -> bytes:
        with self.lock:
            return super().get(*args, **kwargs)


def progress_text(indexed: int, total: int, *, done: bool, error: BaseException | None) -> str:
    """The build's status line: 'Indexing: 1,200 of 8,091 images indexed; results grow as it goes.'"""
    if error is not None:
        return f"Indexing stopped at {indexed:,} of {total:,} images: {error}"
    if done:
        return f"Indexing finished: {indexed:,} images."
    return f"Indexing in the background: indexed {indexed:,} of {total:,} images; results grow as it goes."


def _preload_map_widget() -> None:
    """Import jupyter-scatter in the background, once per server: the first map a session opens then
    draws in about 1.5 s instead of 3 (the import takes ~1.4 s and ~140 MB, paid once, not per session)."""
    if importlib.util.find_spec("jscatter") is None:
        return
    try:
        importlib.import_module("jscatter")
    except Exception as error:  # the map reports the problem itself when a session opens it
        _log.debug("could not preload jupyter-scatter: %s", error)


class SharedSearch:
    """The searcher, thumbnails and build progress that all sessions of one server use."""

    def __init__(self, store: str | Path, encoder: Any = None, *, build: BackgroundBuild | None = None,
                 refresh_s: float = 2.0, per_page: int = 24) -> None:
        self.store = EmbeddingStore.open(store)
        try:
            self.searcher = LockedSearcher(self.store, None if encoder is None else BatchedTexts(encoder))
        except BaseException:
            self.store.close()
            raise
        self.thumbnails = LockedThumbnails(self.store, disk_dir=disk_cache_dir(self.store.path))
        self.build = build
        self.per_page = per_page
        self.refresh_s = refresh_s
        self._stop = threading.Event()
        self._refresher = threading.Thread(target=self._refresh_loop, name="clipwidgets-refresh", daemon=True)
        self._refresher.start()
        threading.Thread(target=_preload_map_widget, name="clipwidgets-preload", daemon=True).start()

    def progress(self) -> str | None:
        """The build's status line, or None when no build ran in this server."""
        build = self.build
        if build is None:
            return None
        return progress_text(self.searcher.num_images, build.total, done=build.done.is_set(),
                             error=build.error)

    def new_view(self, *, on_close: Callable[[], None] | None = None) -> widgets.VBox:
        """One session's widgets: the progress line (while a build runs) above a new SearchPanel, and
        the map, near-duplicates and labels under it (built when opened)."""
        from ..explore_tools import ExploreTools

        panel = SearchPanel(self.searcher, thumbnails=self.thumbnails, per_page=self.per_page)
        line = widgets.HTML()
        line.add_class("clipwidgets-progress")
        tools = ExploreTools(panel, thumbnails=self.thumbnails)
        view = widgets.VBox([line, panel, tools])
        view.panel, view.tools = panel, tools
        view.progress_line = line
        self.show_progress(view)
        return view

    def show_progress(self, view: widgets.VBox) -> None:
        """Update a view's progress line (hidden when no build ran)."""
        text = self.progress()
        line = view.progress_line
        value = "" if text is None else f"<i>{html.escape(text)}</i>"
        if line.value != value:
            line.value = value

    def building(self) -> bool:
        """True while a background build is still running."""
        return self.build is not None and not self.build.done.is_set()

    def close(self) -> None:
        """Stop the refresher and close the store."""
        self._stop.set()
        self._refresher.join(timeout=5)
        self.searcher.close()
        self.store.close()

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.refresh_s):
            try:
                self.searcher.refresh()
            except (ClipWidgetsError, OSError) as error:  # a store being replaced: try again later
                _log.warning("could not reload the store: %s", error)
