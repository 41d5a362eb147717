"""Loading a checkpoint file into a built open_clip model, refusing damaged files by name.

A `.safetensors` file whose tensors match the model is read tensor by tensor with plain file reads
(never memory-mapped, never a second full copy); anything else goes through open_clip's
`load_checkpoint`, which converts other layouts. Before either, the file is checked to be what its
name says (an empty, truncated or random file, or a text file, gets a ModelLoadError naming it).
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import open_clip
import torch
from safetensors import SafetensorError

from .errors import ModelLoadError

__all__ = ["load_weights"]

_READ_BYTES = 8 << 20
_MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit on the JSON header
_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
                       "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
                       "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}
_PICKLE_PROTOCOL = 0x80  # first byte of a pickle of protocol 2 or later (torch.save's legacy format)
_NUMPY_MAGIC = b"\x93NUMPY"
# What reading a damaged file raises somewhere inside torch, pickle, zipfile or safetensors.
_READ_ERRORS = (RuntimeError, OSError, KeyError, ValueError, EOFError, pickle.UnpicklingError, IndexError,
                OverflowError, TypeError, AttributeError, zipfile.BadZipFile, MemoryError, SafetensorError)


def load_weights(model: torch.nn.Module, path: str, *, model_name: str) -> None:
    """Copy the checkpoint at `path` into `model` (already in its final dtype).

    Raises ModelLoadError naming the file when it is empty, truncated or not a checkpoint, and
    when its tensors do not fit the architecture `model_name`.
    """
    entries = _checked(Path(path))
    try:
        if entries is not None and _stream_safetensors(model, Path(path), entries):
            return
        open_clip.load_checkpoint(model, path)
    except _READ_ERRORS as error:
        detail = str(error)[:300] or "no detail"
        raise ModelLoadError(f"Could not load weights from {path} into {model_name!r} "
                             f"({type(error).__name__}: {detail}). Check that the file is a complete "
                             "checkpoint saved from this architecture; if it was downloaded, download it "
                             "again.") from error


def _refuse(path: Path, problem: str) -> ModelLoadError:
    return ModelLoadError(f"The checkpoint {path} {problem}. Give a checkpoint saved with torch.save "
                          "(.pt, .pth, .bin) or a .safetensors file; if it was downloaded, download it "
                          "again.")


def _checked(path: Path) -> dict[str, Any] | None:
    """The tensor entries of a valid .safetensors header, None for another valid-looking checkpoint."""
    size = path.stat().st_size
    if size == 0:
        raise _refuse(path, "is empty (0 bytes)")
    with open(path, "rb") as file:
        head = file.read(8)
        if path.suffix == ".safetensors":
            return _safetensors_entries(path, file, head, size)
    if head.startswith(b"PK"):
        if not zipfile.is_zipfile(path):
            raise _refuse(path, f"is truncated or damaged (a zip archive without its directory, {size:,} "
                          "bytes)")
        return None
    if head[0] == _PICKLE_PROTOCOL or head.startswith(_NUMPY_MAGIC):
        return None
    raise _refuse(path, "is not a checkpoint (neither a PyTorch zip archive, a pickle, nor numpy data)")


def _safetensors_entries(path: Path, file: BinaryIO, head: bytes, size: int) -> dict[str, Any]:
    if len(head) < 8:
        raise _refuse(path, f"is truncated ({size} bytes, shorter than a safetensors header)")
    header_size = int.from_bytes(head, "little")
    if header_size > min(size - 8, _MAX_HEADER_BYTES):
        raise _refuse(path, f"is not a valid .safetensors file (its header claims {header_size:,} bytes, "
                      f"the file holds {size:,})")
    try:
        entries = json.loads(file.read(header_size))
        if not isinstance(entries, dict):
            raise ValueError("the header is not a JSON object")
        entries.pop("__metadata__", None)
        data_end = max((int(entry["data_offsets"][1]) for entry in entries.values()), default=0)
    except (ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError) as error:
        raise _refuse(path, f"is not a valid .safetensors file (bad header: {error})") from error
    if 8 + header_size + data_end > size:
        raise _refuse(path, f"is truncated: {size:,} bytes, where its header describes "
                      f"{8 + header_size + data_end:,}")
    return {"__header_size__": header_size, **entries}


@torch.no_grad()
def _stream_safetensors(model: torch.nn.Module, path: Path, entries: dict[str, Any]) -> bool:
    """Copy the tensors one at a time when their names, shapes and dtypes match the model's."""
    entries = dict(entries)
    data_start = 8 + entries.pop("__header_size__")
    targets = model.state_dict()
    if set(entries) != set(targets) or not all(
            tuple(entries[key]["shape"]) == tuple(targets[key].shape)
            and entries[key]["dtype"] in _SAFETENSORS_DTYPES for key in entries):
        return False  # another layout: open_clip converts it
    with open(path, "rb") as file:
        for key, target in targets.items():
            _copy_tensor(file, data_start, entries[key], target)
    return True


def _copy_tensor(file: BinaryIO, data_start: int, entry: dict[str, Any], target: torch.Tensor) -> None:
    """Copy one stored tensor into `target`, reading at most about _READ_BYTES at a time."""
    begin, end = entry["data_offsets"]
    dtype, shape = _SAFETENSORS_DTYPES[entry["dtype"]], entry["shape"]
    if end == begin:
        return
    if not shape:  # a scalar
        file.seek(data_start + begin)
        target.copy_(torch.frombuffer(bytearray(file.read(end - begin)), dtype=dtype).reshape(()))
        return
    row_bytes = (end - begin) // shape[0]
    rows_per_read = max(1, _READ_BYTES // row_bytes)
    for first in range(0, shape[0], rows_per_read):
        count = min(rows_per_read, shape[0] - first)
        file.seek(data_start + begin + first * row_bytes)
        chunk = torch.frombuffer(bytearray(file.read(count * row_bytes)), dtype=dtype)
        target[first:first + count].copy_(chunk.reshape(count, *shape[1:]))
