"""Texts (captions, saved queries): one immutable HDF5 file per version, held whole in memory.

Texts link to images by their stable image id, so merging segments never touches them; a text file is
rewritten only by commits that change texts (adding texts, removing or replacing captioned images).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import h5py
import numpy as np

from .format import STRING

__all__ = ["TEXTS_FORMAT", "Texts", "read_strings", "read_texts", "strings", "write_texts"]

TEXTS_FORMAT = "clipwidgets.texts"


@dataclass(frozen=True)
class Texts:
    """All texts of a store; `name` is the file they were read from (None: not written yet)."""

    name: str | None
    text: tuple[str, ...]
    embeddings: np.ndarray  # (m, dim)
    image_id: np.ndarray  # (m,) int64, -1 for none
    source: tuple[str, ...]

    @classmethod
    def empty(cls, dim: int, dtype: str) -> Texts:
        return cls(None, (), np.zeros((0, dim), dtype), np.zeros(0, np.int64), ())

    def __len__(self) -> int:
        return len(self.text)

    def appended(self, text: Sequence[str], embeddings: np.ndarray, image_id: np.ndarray,
                 source: Sequence[str]) -> Texts:
        return Texts(None, (*self.text, *text), np.concatenate([self.embeddings, embeddings]),
                     np.concatenate([self.image_id, image_id]), (*self.source, *source))

    def kept(self, keep: np.ndarray) -> Texts:
        """Only the texts where `keep` is true (a new, unsaved version)."""
        picked = np.flatnonzero(keep).tolist()
        return Texts(None, tuple(self.text[i] for i in picked), np.ascontiguousarray(self.embeddings[keep]),
                     self.image_id[keep], tuple(self.source[i] for i in picked))

    def relinked(self, old: np.ndarray, new: np.ndarray) -> Texts:
        """Texts of image ids `old` moved to ids `new` (a replaced image keeps its captions)."""
        if not len(self) or not len(old):
            return self
        order = np.argsort(old)
        position = np.clip(np.searchsorted(old[order], self.image_id), 0, len(old) - 1)
        hit = old[order][position] == self.image_id
        if not hit.any():
            return self
        return replace(self, name=None, image_id=np.where(hit, new[order][position], self.image_id))


def strings(values: Sequence[str]) -> np.ndarray:
    return np.array(values, dtype=object) if len(values) else np.array([], dtype=object)


def read_strings(dataset: h5py.Dataset) -> list[str]:
    """A UTF-8 string dataset as a list of str (TypeError for any other dtype, e.g. integers)."""
    info = h5py.check_string_dtype(dataset.dtype)
    if info is None:
        raise TypeError(f"{dataset.name} holds {dataset.dtype}, not strings")
    if dataset.shape[0] == 0:
        return []
    return [raw.decode("utf-8") if isinstance(raw, bytes) else str(raw) for raw in dataset[()].tolist()]


def write_texts(path: Path, texts: Texts) -> None:
    with h5py.File(path, "w") as f:
        f.attrs["format_name"] = TEXTS_FORMAT
        group = f.create_group("texts")
        group.create_dataset("embeddings", data=texts.embeddings)
        group.create_dataset("text", data=strings(texts.text), dtype=STRING)
        group.create_dataset("image_id", data=texts.image_id)
        group.create_dataset("source", data=strings(texts.source), dtype=STRING)


def read_texts(path: Path, name: str) -> Texts:
    """Read a text file; OSError/KeyError/... on a bad one (the caller names the store)."""
    with h5py.File(path, "r", locking=False) as f:
        if f.attrs.get("format_name") != TEXTS_FORMAT:
            raise ValueError(f"{path} is not a clipwidgets text file")
        group = f["texts"]
        embeddings = np.empty(group["embeddings"].shape, group["embeddings"].dtype)
        if embeddings.size:
            group["embeddings"].read_direct(embeddings)
        texts = Texts(name, tuple(read_strings(group["text"])), embeddings,
                      np.asarray(group["image_id"][()], np.int64), tuple(read_strings(group["source"])))
    if not (len(texts.embeddings) == len(texts.image_id) == len(texts.source) == len(texts)):
        raise ValueError("text columns of different lengths")
    return texts

