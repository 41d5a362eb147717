"""Checks of what callers pass in: image paths relative to the root, and embedding rows."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError, ModelMismatchError

__all__ = ["NORM_TOLERANCE", "check_rows", "finite_and_norms", "relative_path", "relative_paths",
           "safe_stored_path", "validated_embeddings"]

NORM_TOLERANCE = 1e-2


def _relative_to(path: str, root: Path) -> str:
    """`path` relative to `root` (which is resolved); "../..." when it lies outside.

    The folders on the way are resolved too when needed (e.g. /tmp -> /private/tmp), but not the
    file itself, so a symlinked image keeps its own name.
    """
    candidates = [os.path.normpath(path)]
    folder, name = os.path.split(candidates[0])
    candidates.append(os.path.join(os.path.realpath(folder), name))
    relative = ""
    for candidate in candidates:
        try:
            relative = os.path.relpath(candidate, root)
        except ValueError:  # another drive on Windows
            relative = os.pardir
        if not relative.startswith(os.pardir):
            break
    return relative


def relative_path(path: str | os.PathLike[str], root: Path) -> str:
    """The POSIX path relative to the image root, refusing anything that escapes it."""
    raw = os.fspath(path)
    if not isinstance(raw, str) or not raw or "\x00" in raw:
        raise InvalidInputError(f"Invalid image path {raw!r}.")
    if os.path.isabs(raw):
        raw = _relative_to(raw, root)
    parts = [part for part in raw.replace(os.sep, "/").split("/") if part not in ("", ".")]
    if not parts or ".." in parts:
        raise InvalidInputError(f"Image path {os.fspath(path)!r} is outside the image root "
                                f"{root}; paths must lie inside it.")
    return "/".join(parts)


def relative_paths(paths: Sequence[str | os.PathLike[str]], root: Path, *,
                   allow_duplicates: bool = False) -> list[str]:
    if isinstance(paths, (str, os.PathLike)):
        raise InvalidInputError("Pass a list of paths, not a single path.")
    relpaths = [relative_path(path, root) for path in paths]
    if not allow_duplicates and len(set(relpaths)) != len(relpaths):
        seen: set[str] = set()
        duplicate = next(p for p in relpaths if p in seen or seen.add(p))  # type: ignore[func-returns-value]
        raise InvalidInputError(f"Duplicate image path {duplicate!r} in one call; give each path once.")
    return relpaths


def safe_stored_path(stored: str, root: Path, store_path: Path) -> Path:
    """`root / stored` after checking a path read from the file stays inside the root (no `..`,
    no absolute path, no drive): a crafted store must not make us read other files."""
    parts = stored.split("/")
    if (not stored or "\x00" in stored or "\\" in stored or os.path.isabs(stored) or ":" in parts[0]
            or any(part in ("", ".", "..") for part in parts)):
        raise InvalidInputError(f"Store {store_path} holds the image path {stored!r}, which is not a "
                                f"plain path inside its image root {root}; it was not opened. Rebuild "
                                "the store with `clipwidgets index`.")
    return root / stored


def finite_and_norms(rows: np.ndarray, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Per row: all values finite, and the L2 norm; in float32 chunks, so memory stays small."""
    finite = np.empty(len(rows), dtype=bool)
    norms = np.empty(len(rows), dtype=np.float32)
    for start in range(0, len(rows), chunk):
        block = rows[start:start + chunk].astype(np.float32)
        finite[start:start + chunk] = np.isfinite(block).all(axis=1)
        norms[start:start + chunk] = np.sqrt(np.einsum("ij,ij->i", block, block))
    return finite, norms


def check_rows(rows: np.ndarray, label: Callable[[int], str]) -> None:
    """Refuse non-finite rows and rows whose norm is not 1 (within NORM_TOLERANCE), naming the first."""
    finite, norms = finite_and_norms(rows)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise InvalidInputError(f"The embedding of {label(row)} (row {row}) contains NaN or inf; "
                                "nothing was stored.")
    off = np.abs(norms - 1) > NORM_TOLERANCE
    if off.any():
        row = int(np.flatnonzero(off)[0])
        raise InvalidInputError(f"The embedding of {label(row)} (row {row}) has norm {norms[row]:.4g}; "
                                "stores hold L2-normalised rows (divide by the norm first).")


def validated_embeddings(embeddings: np.ndarray, count: int, label: Callable[[int], str], *, kind: str,
                         meta: Mapping[str, Any], dtype: np.dtype, store_path: Path) -> np.ndarray:
    """Check shape, model dimension, finiteness and unit norm; return the rows in the store dtype."""
    dim = int(meta["embed_dim"])
    rows = np.asarray(embeddings)
    if rows.ndim != 2 or rows.shape[0] != count:
        raise InvalidInputError(f"Expected {count} {kind} embeddings of shape ({count}, {dim}), "
                                f"got an array of shape {rows.shape}.")
    if rows.shape[1] != dim:
        raise ModelMismatchError(
            f"{store_path} holds {dim}-d embeddings of {meta['name']}/{meta['pretrained']}; these {kind} "
            f"embeddings are {rows.shape[1]}-d, so they come from another model. Use "
            f"--model {meta['name']} --pretrained {meta['pretrained']} or a new store.")
    if not np.issubdtype(rows.dtype, np.floating):
        raise InvalidInputError(f"{kind} embeddings must be floating point, got {rows.dtype}.")
    check_rows(rows, label)
    return np.ascontiguousarray(rows, dtype=dtype)
