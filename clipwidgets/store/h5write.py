"""Small HDF5 writes through h5py's low-level API, for the files every commit writes.

h5py's high-level `create_dataset` and `attrs[...] =` cost about 0.1-0.25 ms each in Python; a
commit writes a segment file and a manifest of about 30 datasets and attributes, so they were most
of a small commit's CPU time. These helpers make the same objects (contiguous, uncompressed
datasets; scalar attributes; UTF-8 variable-length strings, as the high-level API makes them) at a
quarter of the cost.
"""

from __future__ import annotations

from typing import Any

import h5py
import numpy as np
from h5py import h5a, h5d, h5p, h5s, h5t

__all__ = ["put", "put_attr", "put_strings"]

_STRING = h5py.string_dtype("utf-8")
_LINKS = h5p.create(h5p.LINK_CREATE)
_LINKS.set_create_intermediate_group(True)  # "images/id" creates "images" when missing
_LINKS.set_char_encoding(h5t.CSET_UTF8)


def _space(shape: tuple[int, ...]) -> Any:
    return h5s.create_simple(shape) if shape else h5s.create(h5s.SCALAR)


def put(parent: h5py.Group, name: str, values: np.ndarray) -> h5d.DatasetID:
    """Create the contiguous dataset `parent/name` holding `values`; returns its (open) id."""
    values = np.ascontiguousarray(values)
    dataset = h5d.create(parent.id, name.encode(), h5t.py_create(values.dtype), _space(values.shape),
                         lcpl=_LINKS)
    if values.size:
        dataset.write(h5s.ALL, h5s.ALL, values)
    return dataset


def put_strings(parent: h5py.Group, name: str, values: list[str] | tuple[str, ...]) -> None:
    """Create `parent/name`: a 1-d dataset of UTF-8 variable-length strings."""
    kind = h5t.py_create(_STRING, logical=True)
    dataset = h5d.create(parent.id, name.encode(), kind, h5s.create_simple((len(values),)), lcpl=_LINKS)
    if len(values):
        dataset.write(h5s.ALL, h5s.ALL, np.array(values, dtype=_STRING))
    dataset.close()


def put_attr(obj: h5py.HLObject, name: str, value: Any) -> None:
    """Create the scalar attribute `name` of a new object (a str becomes a UTF-8 variable-length string,
    as in h5py)."""
    if isinstance(value, str):
        data, kind = np.array(value, dtype=_STRING), h5t.py_create(_STRING, logical=True)
    else:
        data = np.asarray(value)
        kind = h5t.py_create(data.dtype, logical=True)
    attr = h5a.create(obj.id, name.encode(), kind, _space(data.shape))
    attr.write(data)
    attr.close()
