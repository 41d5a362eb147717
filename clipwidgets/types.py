"""The types modules pass each other: a path alias and the encoder and store-reader Protocols.

`Encoder` (clipwidgets.model) and `EmbeddingStore` (clipwidgets.store) satisfy them; tests and
other engines may pass any object with the same members (Protocols match by shape, not by class).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

    from .store import VectorBlock

__all__ = ["EncoderLike", "PathLike", "PixelEncoder", "StoreReader"]

PathLike: TypeAlias = str | os.PathLike[str]
"""A file or folder path, as a string or a path object."""


class EncoderLike(Protocol):
    """What search needs from a model: its metadata and L2-normalised float32 (N, D) embeddings."""

    @property
    def meta(self) -> dict[str, Any]:
        """{"name", "pretrained", "embed_dim", "preprocess", ...}: see docs/architecture.md."""
        ...

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """PIL images -> (N, D) float32."""
        ...

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Strings -> (N, D) float32."""
        ...


class PixelEncoder(EncoderLike, Protocol):
    """What the indexer needs besides: the device, the model's transform and preprocessed batches."""

    @property
    def device(self) -> str:
        """"cpu", "cuda", "cuda:1", "mps"."""
        ...

    @property
    def preprocess(self) -> Any:
        """PIL image -> (3, H, W) tensor (open_clip's transform)."""
        ...

    def encode_pixels(self, pixels: Any) -> np.ndarray:
        """A preprocessed (N, 3, H, W) tensor -> (N, D) float32."""
        ...


class StoreReader(Protocol):
    """The read side of an embedding store, as search, evaluation, thumbnails and views use it."""

    @property
    def path(self) -> Path: ...

    @property
    def model_meta(self) -> dict[str, Any]: ...

    @property
    def image_root(self) -> Path: ...

    @property
    def num_images(self) -> int: ...

    @property
    def num_texts(self) -> int: ...

    def image_paths(self) -> list[str]: ...

    def image_path(self, row: int) -> str: ...

    def image_embeddings(self) -> np.ndarray: ...

    def image_vectors(self, rows: Sequence[int] | np.ndarray) -> np.ndarray: ...

    def vector_blocks(self) -> list[VectorBlock]: ...

    def texts(self) -> list[str]: ...

    def text_embeddings(self) -> np.ndarray: ...

    def text_image_index(self) -> np.ndarray: ...

    def text_sources(self) -> list[str]: ...

    def captions(self, index: int) -> list[str]: ...

    def subsets(self) -> dict[str, np.ndarray]: ...

    def index_of(self, path: PathLike) -> int: ...

    def abspath(self, index_or_relpath: int | PathLike) -> Path: ...

    def check_model(self, model_meta: Mapping[str, Any]) -> None: ...
