"""The store bootstrap shared by the app and the notebooks: build a missing store from a folder of images.

A folder in the Flickr8k layout (`<data>/Images` beside `Flickr8k.token.txt`) is indexed with its
captions; any other folder is indexed as plain images. `BackgroundBuild` runs the same build on a
thread, so the app can serve the first committed rows while the rest is indexed. This module sits
below the views: it knows the indexer and the datasets, never a widget or a server.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from .errors import StoreError

__all__ = ["BackgroundBuild", "build_store", "count_images", "ensure_images", "ensure_store", "unindexed"]


def count_images(folder: str | os.PathLike[str]) -> int:
    """How many image files the indexer would find under `folder` (0 when it does not exist)."""
    from .images import scan_images

    folder = Path(folder)
    return len(scan_images(folder)) if folder.is_dir() else 0


def unindexed(store: str | os.PathLike[str], images_dir: str | os.PathLike[str]) -> int:
    """How many images of `images_dir` the store at `store` still lacks (new or changed files); 0 when
    the store indexes another folder. A build stopped half-way resumes from this."""
    from .indexing import plan_run
    from .store import EmbeddingStore

    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        return 0
    with EmbeddingStore.open(store) as opened:
        if opened.image_root.resolve() != images_dir.resolve():
            return 0
        return len(plan_run(images_dir, opened, prune=False).todo)


def ensure_images(store: str | os.PathLike[str], images_dir: str | os.PathLike[str], *,
                  allow_download: bool = False, progress: bool = True) -> Path:
    """Return `images_dir` once it holds images; with none there and `allow_download`, Flickr8k is
    downloaded into the folder above it first (only when the folder is named `Images`)."""
    images_dir = Path(images_dir)
    if count_images(images_dir):
        return images_dir
    if not (allow_download and images_dir.name == "Images"):
        raise StoreError(f"Store {str(store)!r} does not exist and {str(images_dir)!r} holds no images. "
                         "Put images there (or pass --images DIR) and run the command again, "
                         "or build a store with `clipwidgets index`.")
    from .datasets.flickr8k import download_flickr8k

    print(f"No store at {store} and no images in {images_dir}: downloading Flickr8k into "
          f"{images_dir.parent} (first run only).", flush=True)
    download_flickr8k(images_dir.parent, progress=progress)
    return images_dir


def build_store(store: str | os.PathLike[str], encoder: Any, images_dir: str | os.PathLike[str], *,
                workers: int | None = None, progress: bool = True) -> Any:
    """Index `images_dir` into `store` (created or resumed); returns the indexer's summary.

    In the Flickr8k layout the captions and splits are stored too (`index_flickr8k`'s dict);
    otherwise the images alone (`index_images`' IndexReport).
    """
    from .datasets.flickr8k import TOKEN_FILE, index_flickr8k
    from .indexing import index_images

    images_dir = Path(images_dir)
    Path(store).parent.mkdir(parents=True, exist_ok=True)
    if images_dir.name == "Images" and (images_dir.parent / TOKEN_FILE).is_file():
        return index_flickr8k(images_dir.parent, store, encoder, workers=workers, progress=progress)
    return index_images(images_dir, store, encoder, workers=workers, progress=progress)


def ensure_store(store: str | os.PathLike[str], encoder: Any, images_dir: str | os.PathLike[str], *,
                 allow_download: bool = False, progress: bool = True) -> Any:
    """Build `store` from `images_dir` when it does not exist; returns the summary, or None when the
    store was already there (it is then left untouched)."""
    if Path(store).is_file():
        return None
    images_dir = ensure_images(store, images_dir, allow_download=allow_download, progress=progress)
    if progress:
        print(f"No store at {store}: indexing the images in {images_dir} (first run only).", flush=True)
    return build_store(store, encoder, images_dir, progress=progress)


class BackgroundBuild:
    """`build_store` on a daemon thread, decoding in this process (no worker processes to outlive us).

    `total` is the number of images found; `indexed()` how many the store holds now; `done` is set
    when the build ends, with `error` holding what stopped it, if anything.
    """

    def __init__(self, store: str | os.PathLike[str], encoder: Any,
                 images_dir: str | os.PathLike[str]) -> None:
        self.store = Path(store)
        self.images_dir = Path(images_dir)
        self.total = count_images(self.images_dir)
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(encoder,), name="clipwidgets-index",
                                        daemon=True)

    def start(self) -> BackgroundBuild:
        self._thread.start()
        return self

    def indexed(self) -> int:
        """Images committed to the store so far (0 while it does not exist yet)."""
        from .store import EmbeddingStore

        try:
            with EmbeddingStore.open(self.store) as store:
                return store.num_images
        except (StoreError, OSError):
            return 0

    def wait_first_commit(self, timeout: float | None = None, *, poll_s: float = 0.2) -> bool:
        """Wait until the store holds at least one image, or the build ended; True when it has rows."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self.indexed() > 0:
                return True
            if self.done.is_set():
                return self.indexed() > 0
            if deadline is not None and time.monotonic() >= deadline:
                return False
            self.done.wait(poll_s)

    def _run(self, encoder: Any) -> None:
        try:
            build_store(self.store, encoder, self.images_dir, workers=0, progress=False)
        except BaseException as error:  # reported through `error` and the app's status line
            self.error = error
        finally:
            self.done.set()

