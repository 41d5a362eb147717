"""Filters: which store rows a search may return (path glob or prefix, subset, exclusions).

`Filters.allowed(options)` gives a boolean mask over the store's rows, or None when every row may be
returned; path masks are cached (a panel pages and refines with the same glob).
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections import OrderedDict
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from .options import SearchOptions

__all__ = ["Filters"]

_MASK_CACHE = 16


class Filters:
    """Masks over the rows of `store` (an EmbeddingStore) whose relative paths are `paths`."""

    def __init__(self, store: Any, paths: list[str]) -> None:
        self.store, self.paths = store, paths
        self._masks: OrderedDict[str, np.ndarray] = OrderedDict()

    @property
    def num_images(self) -> int:
        return len(self.paths)

    def allowed(self, options: SearchOptions, has_caption: np.ndarray | None = None) -> np.ndarray | None:
        """A boolean mask of the rows `options` lets through, or None when all may be returned.
        `has_caption` (one bool per row) restricts target="captions" to images with captions."""
        masks = []
        if options.target == "captions" and has_caption is not None:
            masks.append(has_caption)
        if options.path_glob is not None:
            masks.append(self.path_mask(options.path_glob))
        if options.subset is not None:
            masks.append(self.subset_mask(options.subset))
        if options.exclude is not None:
            mask = np.ones(self.num_images, dtype=bool)
            mask[self.rows(options.exclude, what="exclude")] = False
            masks.append(mask)
        if not masks:
            return None
        return np.logical_and.reduce(masks) if len(masks) > 1 else masks[0].copy()

    def path_mask(self, pattern: str) -> np.ndarray:
        """Rows whose relative path matches the glob `pattern` (`*` also matches `/`) or starts with it."""
        if pattern not in self._masks:
            if any(char in pattern for char in "*?["):
                matches = re.compile(fnmatch.translate(pattern)).match
                mask = np.fromiter((matches(path) is not None for path in self.paths), bool, self.num_images)
            else:
                mask = np.fromiter((path.startswith(pattern) for path in self.paths), bool, self.num_images)
            self._masks[pattern] = mask
            while len(self._masks) > _MASK_CACHE:
                self._masks.popitem(last=False)
        return self._masks[pattern]

    def subset_mask(self, subset: Any) -> np.ndarray:
        """Rows of a subset given by name, boolean mask, rows or paths."""
        mask = np.zeros(self.num_images, dtype=bool)
        if isinstance(subset, str):
            subsets = self.store.subsets()
            if subset not in subsets:
                known = ", ".join(sorted(subsets)) or "none"
                raise InvalidInputError(f"subset={subset!r} is not a subset of {self.store.path} "
                                        f"(known: {known}).")
            mask[subsets[subset]] = True
        elif isinstance(subset, np.ndarray) and subset.dtype == bool:
            if subset.shape != (self.num_images,):
                raise InvalidInputError(f"A boolean subset needs one value per image ({self.num_images}), "
                                        f"not shape {subset.shape}.")
            mask[:] = subset
        else:
            mask[self.rows(subset, what="subset")] = True
        return mask

    def rows(self, items: Any, *, what: str) -> np.ndarray:
        """Store rows of `items` (rows or paths); `what` names the option in messages."""
        if isinstance(items, (str, PurePath, int, np.integer)):
            items = [items]
        try:
            return np.array([self.index_of(item) for item in items], dtype=np.int64)
        except TypeError as error:
            raise InvalidInputError(f"{what}={items!r}: give rows or paths of store images.") from error

    def index_of(self, item: int | str | os.PathLike[str]) -> int:
        """Row of a store image given as a row, a relative path, or a path inside the image root."""
        if isinstance(item, (bool, np.bool_)):
            raise InvalidInputError(f"{item!r} is not an image: give a row number or a path.")
        if isinstance(item, (int, np.integer)):
            index = int(item)
            if not 0 <= index < self.num_images:
                raise InvalidInputError(f"Image row {index} is out of range: the store has "
                                        f"{self.num_images} images (rows 0..{self.num_images - 1}).")
            return index
        if isinstance(item, (str, PurePath)):
            try:
                return int(self.store.index_of(item))
            except InvalidInputError:
                path = Path(item).expanduser()
                if path.is_absolute() or not path.exists():
                    raise
            return int(self.store.index_of(path.resolve()))  # a path relative to the working directory
        raise InvalidInputError(f"{item!r} is not an image of the store: give a row number or a path.")
