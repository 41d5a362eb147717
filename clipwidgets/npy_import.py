"""Importing the seed prototype's `.npy` embeddings and its image folder into a new store."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InvalidInputError
from .store import EmbeddingStore, segments_folder
from .store.validation import finite_and_norms

__all__ = ["SEED_IMAGE_EXTENSIONS", "import_npy"]

SEED_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def import_npy(store_path: str | os.PathLike[str], image_embeddings_npy: str | os.PathLike[str],
               images_dir: str | os.PathLike[str], *, model_meta: dict[str, Any],
               text_embeddings_npy: str | os.PathLike[str] | None = None, texts: Sequence[str] | None = None,
               image_paths: Sequence[str] | None = None,
               text_image_paths: Sequence[str | None] | None = None,
               text_sources: Sequence[str] | None = None) -> EmbeddingStore:
    """Build a new store from the seed prototype's .npy files and its image folder.

    Rows of `image_embeddings_npy` belong to `image_paths`, by default the prototype's listing:
    `sorted(os.listdir(images_dir))` filtered to .jpg/.jpeg/.png. Counts must match. Raw features
    are L2-normalised on import. `text_image_paths` links each text to an image (None for none).
    `text_sources` tags each text (e.g. "flickr8k#0"). Returns the new store, open for writing.
    """
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise InvalidInputError(f"Image folder {images_dir} does not exist.")
    listed_by_prototype = image_paths is None
    if image_paths is None:
        image_paths = [name for name in sorted(os.listdir(images_dir))
                       if name.lower().endswith(SEED_IMAGE_EXTENSIONS)]
    image_rows = _load_npy(image_embeddings_npy)
    if len(image_rows) != len(image_paths):
        images = (f"{images_dir} has {len(image_paths)} images (.jpg/.jpeg/.png, as the prototype listed "
                  "them)" if listed_by_prototype else f"{len(image_paths)} image paths were given")
        raise InvalidInputError(
            f"{image_embeddings_npy} has {len(image_rows)} rows but {images}: the embeddings are out of "
            "step with the images. Re-index the folder with `clipwidgets index` instead of importing.")
    text_rows, text_list = _text_rows(text_embeddings_npy, texts)
    records = [_file_record(images_dir / name) for name in image_paths]
    store = EmbeddingStore.create(store_path, model_meta, images_dir)
    try:
        with store.batch():
            store.add_images(list(image_paths), _normalised(image_rows, image_paths, image_embeddings_npy),
                             sizes=[r[0] for r in records], mtimes_ns=[r[1] for r in records],
                             widths=[r[2] for r in records], heights=[r[3] for r in records])
            if text_rows is not None:
                links = [-1] * len(text_list) if text_image_paths is None else [
                    -1 if p is None else store.index_of(p) for p in text_image_paths]
                labels = [f"text {i}" for i in range(len(text_list))]
                store.add_texts(text_list, _normalised(text_rows, labels, text_embeddings_npy),
                                image_index=links, sources=text_sources)
    except BaseException:
        store.close()
        _delete_store(Path(store_path))
        raise
    return store


def _delete_store(path: Path) -> None:
    """Remove a store this import created and could not finish (its manifest and segment folder)."""
    folder = segments_folder(path.absolute())
    with contextlib.suppress(OSError):
        path.unlink()
    if folder.is_dir():
        for entry in folder.iterdir():
            with contextlib.suppress(OSError):
                entry.unlink()
        with contextlib.suppress(OSError):
            folder.rmdir()


def _normalised(rows: np.ndarray, labels: Sequence[str], source: Any) -> np.ndarray:
    """Rows divided by their L2 norm (float32); refuses zero, NaN and inf rows naming the first."""
    finite, norms = finite_and_norms(rows)
    bad = np.flatnonzero(~finite | (norms == 0))
    if bad.size:
        raise InvalidInputError(f"Row {bad[0]} of {source} ({labels[bad[0]]}) is zero, NaN or inf; "
                                "it cannot be normalised. Re-index the folder instead.")
    return (rows / norms[:, None]).astype(np.float32)


def _load_npy(path: str | os.PathLike[str]) -> np.ndarray:
    try:
        rows = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise InvalidInputError(f"Cannot read embeddings file {path}: {error}.") from error
    if rows.ndim != 2 or not np.issubdtype(rows.dtype, np.floating):
        raise InvalidInputError(f"{path} holds a {rows.dtype} array of shape {rows.shape}; expected "
                                "a 2-d float array (rows x embedding dim).")
    return rows


def _text_rows(npy: str | os.PathLike[str] | None,
               texts: Sequence[str] | None) -> tuple[np.ndarray | None, list[str]]:
    if npy is None:
        if texts is not None:
            raise InvalidInputError("Texts were given without their embeddings (text_embeddings_npy).")
        return None, []
    rows = _load_npy(npy)
    if texts is None:
        raise InvalidInputError(f"{npy} needs the texts its rows embed (one caption per row).")
    if len(rows) != len(texts):
        raise InvalidInputError(f"{npy} has {len(rows)} rows but {len(texts)} texts were given: "
                                "they are out of step. Give the captions file the embeddings were made from.")
    return rows, list(texts)


def _file_record(path: Path) -> tuple[int, int, int, int]:
    """(size, mtime_ns, width, height) of an image file; width and height are -1 when unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        stat = path.stat()
    except OSError as error:
        raise InvalidInputError(f"Image {path} listed for import cannot be read: {error}.") from error
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError):
        width = height = -1
    return stat.st_size, stat.st_mtime_ns, width, height
