"""QueryEncoder: a query (text algebra, image, image file, vector, weighted parts) -> one unit vector.

The vector is sum(weight * embedding(part)) over the query's parts, renormalised; text embeddings
come from an LRU cache, so paging through a query or repeating one never runs the text encoder
again. Everything that adjusts a query (negative text, "more like this", relevance feedback) adds
weighted parts: `combine([Part(weight, value, label), ...])`.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import PurePath
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image

from ..errors import ImageDecodeError, InvalidInputError
from ..query import QueryPart, format_query, parse_negative, parse_query

__all__ = ["Part", "QueryEncoder", "TextCache", "negative_parts", "query_texts"]


class Part(NamedTuple):
    """One weighted term of a query: `value` is text, a vector, a PIL image, an image array or an
    image file (Path); `label` is how the term reads in the query's description."""

    weight: float
    value: Any
    label: str


class TextCache:
    """Text -> float32 vector, least recently used dropped first; misses are filled by the caller."""

    def __init__(self, size: int) -> None:
        self.size = max(0, int(size))
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def get(self, key: str) -> np.ndarray:
        self._items.move_to_end(key)
        return self._items[key]

    def put(self, key: str, value: np.ndarray) -> None:
        self._items[key] = value
        while len(self._items) > max(self.size, 1):
            self._items.popitem(last=False)


class QueryEncoder:
    """Turns queries into unit vectors of the store's embedding space.

    `model_meta` is the store's model record (its `embed_dim` and name, for messages); `encoder`
    (clipwidgets.model.Encoder, or None) encodes text and image parts; `cache_size` texts are kept.
    """

    def __init__(self, model_meta: dict[str, Any], encoder: Any = None, *, cache_size: int = 256) -> None:
        self.model_meta = model_meta
        self.dim = int(model_meta["embed_dim"])
        self.encoder = encoder
        self.cache = TextCache(cache_size)
        self.model_calls = 0  # how often the encoder ran (a search that ran it scores calmly, see kernels.py)

    def query_vector(self, query: Any, *, negative: str | None = None) -> tuple[np.ndarray, str]:
        """The unit float32 vector a query stands for, and a short description of the query."""
        if negative is None and isinstance(query, np.ndarray) and query.ndim == 1:  # the common vector query
            return self.checked_vector(query), _label(query)
        parts = [Part(weight, value, _label(value)) for weight, value in self.parts(query)]
        return self.combine(parts + negative_parts(negative))

    def parts(self, query: Any) -> list[tuple[float, Any]]:
        """(weight, value) pairs of a query: text is parsed with the query algebra."""
        if isinstance(query, str):
            return [(part.weight, part.text) for part in parse_query(query)]
        if isinstance(query, list) or (isinstance(query, tuple) and not _is_pair(query)):
            parts = [_as_part(item) for item in query]
            if not parts:
                raise InvalidInputError("The query is an empty list: give at least one part.")
            if all(weight < 0 for weight, _ in parts):
                raise InvalidInputError("The query has only negative parts: a query needs at least one "
                                        "positive part.")
            return parts
        return [(1.0, query)]

    def combine(self, parts: list[Part]) -> tuple[np.ndarray, str]:
        """sum(weight * unit vector of value), renormalised, and the description of the parts."""
        texts = self.text_vectors([part.value for part in parts if isinstance(part.value, str)])
        total = np.zeros(self.dim, dtype=np.float64)
        for weight, value, _ in parts:
            vector = texts[value] if isinstance(value, str) else self.vector(value)
            total += weight * vector.astype(np.float64)
        norm = float(np.linalg.norm(total))
        description = format_query([QueryPart(part.weight, part.label) for part in parts])
        if not math.isfinite(norm) or norm < 1e-6:
            raise InvalidInputError(f"The parts of {description!r} cancel out: change the weights or the "
                                    "texts so that something is left to search for.")
        return (total / norm).astype(np.float32), description

    def vector(self, value: Any) -> np.ndarray:
        """The unit vector of one non-text part (image file, PIL image, image array or vector)."""
        if isinstance(value, PurePath):
            from ..images import load_image

            try:
                image = load_image(value)
            except ImageDecodeError as error:
                raise ImageDecodeError(f"Cannot search with image {value}: {error}. Give a readable "
                                       "image file (JPEG, PNG, WebP, ...).") from error
            return self._encode_image(image)
        if isinstance(value, Image.Image):
            return self._encode_image(value)
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        if isinstance(value, np.ndarray):
            if value.ndim == 1:
                return self.checked_vector(value)
            return self._encode_image(_array_image(value))
        raise InvalidInputError(f"Cannot search for a {type(value).__name__}: give text, a PIL image, a "
                                "pathlib.Path of an image file, an image array (H, W, 3) or a vector.")

    def checked_vector(self, vector: np.ndarray) -> np.ndarray:
        """`vector` normalised to unit length; refused when of another dimension, zero or not finite."""
        if vector.shape != (self.dim,):
            raise InvalidInputError(f"The query vector has {vector.shape[0]} values but the store's "
                                    f"embeddings have {self.dim} ({self.model_meta['name']}).")
        vector = vector.astype(np.float64)
        norm = math.sqrt(float(vector @ vector))
        if not math.isfinite(norm) or norm == 0:
            raise InvalidInputError("The query vector is zero or not finite: it points nowhere.")
        return (vector / norm).astype(np.float32)

    def text_vectors(self, texts: list[str]) -> dict[str, np.ndarray]:
        """{text: vector}, from the cache or encoded in one batch (then cached)."""
        if any(not text.strip() for text in texts):
            raise InvalidInputError("A text part of the query is empty: type some text.")
        vectors = {text: self.cache.get(text) for text in texts if text in self.cache}
        missing = [text for text in dict.fromkeys(texts) if text not in vectors]
        if missing:
            encoded = self._require_encoder("text").encode_texts(missing)
            self.model_calls += 1
            for text, vector in zip(missing, encoded, strict=True):
                self.cache.put(text, vector)
                vectors[text] = vector
        return vectors

    def _encode_image(self, image: Image.Image) -> np.ndarray:
        encoded = self._require_encoder("image").encode_images([image])[0]
        self.model_calls += 1
        return encoded

    def _require_encoder(self, kind: str) -> Any:
        if self.encoder is None:
            meta = self.model_meta
            raise InvalidInputError(f"A {kind} query needs the model: pass encoder=load_model("
                                    f"{meta['name']!r}, {meta['pretrained']!r}) to Searcher (vector and "
                                    "more-like-this queries work without it).")
        return self.encoder


def negative_parts(negative: str | None) -> list[Part]:
    """The parts of a "negative" text, each subtracted ("grass + people" -> -grass, -people)."""
    return [Part(part.weight, part.text, part.text) for part in parse_negative(negative)]


def query_texts(query: Any) -> list[str]:
    """The texts a query will need encoded (for encoding many queries in one batch)."""
    return [part.text for part in parse_query(query)] if isinstance(query, str) else []


def _is_pair(value: tuple) -> bool:
    return len(value) == 2 and isinstance(value[0], (int, float)) and not isinstance(value[0], bool)


def _as_part(item: Any) -> tuple[float, Any]:
    if isinstance(item, QueryPart):
        weight, value = item.weight, item.text
    elif isinstance(item, tuple) and _is_pair(item):
        weight, value = float(item[0]), item[1]
    else:
        raise InvalidInputError(f"Query part {item!r}: a list query holds QueryPart(weight, text) or "
                                "(weight, value) pairs, e.g. [(2, 'beach'), (-1, 'people')].")
    if not math.isfinite(weight) or weight == 0:
        raise InvalidInputError(f"Query part {item!r}: the weight must be a non-zero number.")
    return weight, value


def _label(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, PurePath):
        return f"image:{value.name}"
    if isinstance(value, Image.Image):
        return "image"
    if isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 1:
        return "vector"
    return "image"


def _array_image(array: np.ndarray) -> Image.Image:
    """An (H, W), (H, W, 3) or (H, W, 4) array as a PIL image; floats are read as 0..1."""
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise InvalidInputError(f"An image array must have shape (H, W, 3), (H, W, 4) or (H, W), not "
                                f"{array.shape}; a query vector has shape (D,).")
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.floating) or not np.isfinite(array).all():
            raise InvalidInputError(f"An image array must be uint8 (0..255) or float (0..1), "
                                    f"not {array.dtype}.")
        array = (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(array)).convert("RGB")
