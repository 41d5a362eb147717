"""Shared fixtures: the offline tiny model, generated images and stores. No test touches the network."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest

from clipwidgets import cpu

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_encoder():
    """The offline `tiny` CLIP (random weights, fixed seed), loaded once per test session."""
    from clipwidgets.model import load_model

    return load_model("tiny", device="cpu", precision="fp32")


@pytest.fixture
def photo_dir(tmp_path):
    """A folder of 12 generated 500x375 JPEGs."""
    from clipwidgets.synthetic import make_photos

    folder = tmp_path / "images"
    make_photos(folder, 12)
    return folder


@pytest.fixture(scope="session")
def store_factory(tmp_path_factory, tiny_encoder):
    """`store_factory(...) -> Path`: a closed store built through the store's public API.

    images: a number of generated photos (written to `<folder>/images`, embedded by the tiny model),
        or relative paths of images that need not exist (then `vectors` gives their embeddings).
    vectors: (N, D) image embeddings, instead of the tiny model's. meta: the model metadata
        (default: the tiny model's). photo_size: the generated photos' size.
    texts: captions or free texts, embedded by the tiny model unless `text_vectors` is given;
        `links` gives each text's image row (-1: none; default: none), `sources` their tags.
    subsets: {name: relative paths}. folder: where the store goes (default: a new temporary folder).
    """
    from clipwidgets.store import EmbeddingStore
    from clipwidgets.synthetic import make_photos

    def make(*, images: int | Sequence[str] = 6, vectors: np.ndarray | None = None,
             meta: Mapping | None = None, photo_size: tuple[int, int] = (320, 240),
             texts: Sequence[str] = (), text_vectors: np.ndarray | None = None,
             links: Sequence[int] | None = None, sources: Sequence[str] | None = None,
             subsets: Mapping[str, Sequence[str]] | None = None, folder: Path | None = None,
             name: str = "store.h5") -> Path:
        folder = Path(folder) if folder is not None else tmp_path_factory.mktemp("store")
        root = folder / "images"
        if isinstance(images, int):
            from PIL import Image

            files = make_photos(root, images, size=photo_size)
            paths = [file.name for file in files]
            stats = [file.stat() for file in files]
            sizes, mtimes = [s.st_size for s in stats], [s.st_mtime_ns for s in stats]
            widths, heights = [photo_size[0]] * len(files), [photo_size[1]] * len(files)
            if vectors is None:
                vectors = tiny_encoder.encode_images([Image.open(file) for file in files])
        else:
            paths = list(images)
            sizes = mtimes = widths = heights = [1] * len(paths)
        if vectors is None:
            raise ValueError("store_factory: give `vectors` with image paths")
        path = folder / name
        with EmbeddingStore.create(path, dict(meta or tiny_encoder.meta), root) as store, store.batch():
            store.add_images(paths, vectors, sizes=sizes, mtimes_ns=mtimes, widths=widths, heights=heights)
            if texts:
                embedded = tiny_encoder.encode_texts(list(texts)) if text_vectors is None else text_vectors
                store.add_texts(list(texts), embedded, image_index=links, sources=sources)
            for subset, members in (subsets or {}).items():
                store.set_subset(subset, members)
        return path

    return make


@pytest.fixture
def cpu_flags(monkeypatch):
    """Set the CPU feature flags clipwidgets.cpu reports: cpu_flags({"avx2"})."""
    def set_flags(flags, machine="x86_64"):
        monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset(flags))
        monkeypatch.setattr(cpu.platform, "machine", lambda: machine)
    return set_flags
