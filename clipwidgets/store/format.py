"""The file format's common parts: names and versions, root attributes, model metadata, bad files.

Format version 1 is one self-contained file; version 2 is a manifest plus segment files (see
docs/store.md). Both share the root attributes written and read here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .. import __version__
from ..errors import InvalidInputError, StoreError
from .h5write import put_attr

__all__ = ["DTYPES", "FORMAT_NAME", "FORMAT_VERSION", "MODEL_KEYS", "READ_ERRORS", "STRING", "attr_str",
           "check_model_meta", "damaged", "model_label", "open_checked", "read_model_meta",
           "read_root_attrs", "same_model", "write_root_attrs"]

FORMAT_NAME = "clipwidgets.store"
FORMAT_VERSION = 2
DTYPES = ("float16", "float32")
MODEL_KEYS = ("name", "pretrained", "embed_dim")
STRING = h5py.string_dtype("utf-8")
READ_ERRORS = (OSError, KeyError, ValueError, TypeError, RuntimeError, AttributeError)  # h5py on bad files


def damaged(path: Path, problem: str) -> StoreError:
    """The error for a store whose contents do not make sense."""
    return StoreError(f"Store {path} is damaged: {problem}. It was left untouched; rebuild it with "
                      "`clipwidgets index` into a new file.")


def check_model_meta(model_meta: Any, *, source: str = "model_meta") -> None:
    """Refuse model metadata that is not a dict with a name, a pretrained tag and a positive integer dim."""
    if not isinstance(model_meta, Mapping):
        raise InvalidInputError(f"{source} must be a dict with name, pretrained and embed_dim, got "
                                f"{type(model_meta).__name__}; pass encoder.meta.")
    missing = [key for key in MODEL_KEYS if key not in model_meta]
    if missing:
        raise InvalidInputError(f"{source} lacks {', '.join(missing)}; pass encoder.meta.")
    dim = model_meta["embed_dim"]
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim <= 0:
        raise InvalidInputError(f"{source} embed_dim must be a positive integer, got {dim!r}.")
    for key in ("name", "pretrained"):
        if not isinstance(model_meta[key], str) or not model_meta[key]:
            raise InvalidInputError(f"{source} {key} must be a non-empty string, got {model_meta[key]!r}.")


def model_label(meta: Mapping[str, Any]) -> str:
    return f"{meta['name']}/{meta['pretrained']}"


def same_model(ours: Mapping[str, Any], theirs: Mapping[str, Any]) -> bool:
    """Two model metadata dicts describe the same embeddings: name, pretrained and embed_dim agree."""
    return (str(ours["name"]), str(ours["pretrained"]), int(ours["embed_dim"])) == (
        str(theirs["name"]), str(theirs["pretrained"]), int(theirs["embed_dim"]))


def attr_str(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if not isinstance(value, str):
        raise TypeError(f"expected a string attribute, got {type(value).__name__}")
    return value


def open_checked(path: Path) -> h5py.File:
    """Open a store file for reading after checking it is an HDF5 clipwidgets store we can read."""
    try:
        f = h5py.File(path, "r", locking=False)
    except READ_ERRORS as error:
        raise StoreError(f"{path} is not a readable HDF5 file (truncated, corrupt, or another format): "
                         f"{error}. It was left untouched.") from error
    try:
        name, version = f.attrs.get("format_name"), int(f.attrs.get("format_version", -1))
    except READ_ERRORS as error:
        f.close()
        raise StoreError(f"{path} is an HDF5 file with unreadable attributes (corrupt): {error}. "
                         "It was left untouched.") from error
    if name != FORMAT_NAME:
        f.close()
        raise StoreError(f"{path} is an HDF5 file but not a clipwidgets store (no format_name "
                         f"{FORMAT_NAME!r}). It was left untouched; choose another store path.")
    if version > FORMAT_VERSION:
        f.close()
        raise StoreError(f"{path} has store format version {version}, newer than this clipwidgets "
                         f"{__version__} reads (up to {FORMAT_VERSION}). Upgrade clipwidgets.")
    if version < 1:
        f.close()
        raise damaged(path, f"format_version {version} is not a version")
    return f


def _model_meta_attr(path: Path, f: h5py.File) -> dict[str, Any]:
    try:
        meta = json.loads(attr_str(f.attrs["model_meta"]))
        check_model_meta(meta, source="its model metadata")
    except (*READ_ERRORS, InvalidInputError) as error:
        raise StoreError(f"Store {path} has no usable model metadata ({error}). It was left untouched; "
                         "rebuild it with `clipwidgets index` into a new file.") from error
    return meta


def read_model_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The model metadata a store records, read from its attributes alone (no embeddings loaded)."""
    path = Path(path)
    with open_checked(path) as f:
        return _model_meta_attr(path, f)


def read_root_attrs(path: Path, f: h5py.File) -> dict[str, Any]:
    """The root attributes of an open store file, checked: model_meta, dtype, image_root, times."""
    meta = _model_meta_attr(path, f)
    try:
        dtype = attr_str(f.attrs["dtype"])
        image_root = Path(attr_str(f.attrs["image_root"]))
        relative_attr = attr_str(f.attrs.get("image_root_relative", ""))
        attrs = {"model_meta": meta, "dtype": dtype, "format_version": int(f.attrs["format_version"]),
                 "clipwidgets_version": attr_str(f.attrs.get("clipwidgets_version", "")),
                 "created": attr_str(f.attrs.get("created", "")),
                 "updated": attr_str(f.attrs.get("updated", ""))}
    except READ_ERRORS as error:
        raise StoreError(f"Store {path} is damaged ({type(error).__name__}: {error}). It was left "
                         "untouched; rebuild it with `clipwidgets index` into a new file.") from error
    if dtype not in DTYPES:
        raise damaged(path, f"unknown dtype {dtype!r}")
    relative = path.parent / relative_attr
    if not image_root.is_dir() and relative_attr and relative.is_dir():
        image_root = relative.resolve()  # the store and its images were moved together
    attrs["image_root"] = image_root
    return attrs


def write_root_attrs(f: h5py.File, path: Path, attrs: Mapping[str, Any], *, created: str,
                     updated: str) -> None:
    """Write the root attributes every store file starts with (format version 2) on a new file."""
    meta = attrs["model_meta"]
    values = {"format_name": FORMAT_NAME, "format_version": FORMAT_VERSION, "model_name": str(meta["name"]),
              "model_pretrained": str(meta["pretrained"]), "embed_dim": int(meta["embed_dim"]),
              "model_meta": json.dumps(meta, sort_keys=True), "normalized": True, "dtype": attrs["dtype"],
              "image_root": str(attrs["image_root"]),
              "image_root_relative": os.path.relpath(attrs["image_root"], path.parent),
              "created": created, "updated": updated, "clipwidgets_version": __version__}
    for name, value in values.items():
        put_attr(f, name, value)
