"""Encoder: an open_clip model with its preprocessing, returning L2-normalised float32 numpy arrays.

`load_model()` picks device and precision, resolves weights (a pretrained tag, a local checkpoint or the
offline `tiny` test model), and refuses quickly, with a fix, when weights are not cached and the hub
cannot be reached.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import open_clip
import torch
from PIL import Image

from .errors import InvalidInputError, ModelLoadError
from .settings import DEFAULT_MODEL, DEFAULT_PRETRAINED, TINY_MODEL

__all__ = [
    "Encoder", "PRECISIONS", "TINY_SEED", "list_models", "load_model", "resolve_device", "resolve_precision"
]

TINY_SEED = 0
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_HUB_PROBE_TIMEOUT_S = 5.0
_REUSE_FREED_BYTES = 256 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt() parameter numbers
_CONFIG_DIR = Path(__file__).parent / "model_configs"

open_clip.add_model_config(_CONFIG_DIR)


def resolve_device(device: str = "auto") -> str:
    """Return "cuda", "mps" or "cpu" for `device` ("auto" picks the first one available)."""
    if device != "auto":
        kind = device.split(":")[0]
        if kind not in ("cuda", "mps", "cpu"):
            raise InvalidInputError(f"Unknown device {device!r}: use 'auto', 'cpu', 'cuda' or 'mps'.")
        if kind == "cuda" and not torch.cuda.is_available():
            raise InvalidInputError(f"Device {device!r} requested but CUDA is not available here; "
                                    "use device='auto' or 'cpu'.")
        return device
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def resolve_precision(precision: str, device: str) -> str:
    """Return "fp32", "bf16" or "fp16"; "auto" is fp16 on CUDA and fp32 elsewhere.

    On CPU, "bf16" casts the model's weights to bfloat16 (about 3.5x faster than fp32 on CPUs with
    bf16 support); autocast is never used, since on CPU it is slower than fp32.
    """
    if precision not in PRECISIONS:
        raise InvalidInputError(f"Unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}.")
    if precision == "auto":
        return "fp16" if device.startswith("cuda") else "fp32"
    return precision


def list_models() -> list[str]:
    """Names of every model architecture open_clip knows, the `tiny` test model included."""
    return open_clip.list_models()


class Encoder:
    """A loaded CLIP model: `encode_images`, `encode_texts` and the metadata stores keep."""

    def __init__(self, model: torch.nn.Module, preprocess: Any, tokenizer: Any, *,
                 device: str, precision: str, meta: dict[str, Any]) -> None:
        self.model: Any = model.eval()  # open_clip's CLIP: encode_image, encode_text, ...
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.device = device
        self.precision = precision
        self.dtype = _DTYPES[precision]
        self.meta = meta
        if device.startswith("cpu"):
            _reuse_freed_memory()

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return int(self.meta["embed_dim"])

    def __repr__(self) -> str:
        return (f"Encoder({self.meta['name']!r}, pretrained={self.meta['pretrained']!r}, "
                f"device={self.device!r}, precision={self.precision!r}, dim={self.dim})")

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """Encode an already preprocessed batch (N, 3, H, W) into normalised float32 (N, D)."""
        features = self.model.encode_image(pixels.to(self.device, self.dtype))
        return _normalised_numpy(features)

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Encode PIL images into normalised float32 embeddings of shape (N, D)."""
        if len(images) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        pixels = torch.stack([self.preprocess(image.convert("RGB")) for image in images])
        return self.encode_pixels(pixels)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Encode strings into normalised float32 embeddings of shape (N, D).

        The token sequences are cut after the batch's last end-of-text token: with the causal
        mask the result is the same as running all 77 positions, about twice as fast for queries.
        """
        if isinstance(texts, str):
            raise InvalidInputError("encode_texts takes a list of strings; wrap one text as [text].")
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        tokens = self.tokenizer(list(texts)).to(self.device)
        return _normalised_numpy(_encode_tokens_cut(self.model, tokens))


def _reuse_freed_memory() -> None:
    """Make glibc's malloc keep freed blocks of up to 256 MB for reuse instead of giving them back.

    A CPU forward pass allocates and frees activations of tens of MB. By default each is a fresh
    mmap whose pages fault in one at a time: ~115,000 page faults per batch of 32 for ViT-B/32, and
    measured on 2 cores, 59.6 -> 79.0 images/s at bf16 and 20.1 -> 22.6 at fp32 once they are gone.
    The cost: the process may hold up to 256 MB of freed memory. Does nothing without glibc.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):  # not glibc (macOS, Windows)
        return
    mallopt(_M_MMAP_THRESHOLD, _REUSE_FREED_BYTES)
    mallopt(_M_TRIM_THRESHOLD, _REUSE_FREED_BYTES)


def _normalised_numpy(features: torch.Tensor) -> np.ndarray:
    features = features.float()
    features = features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return features.cpu().numpy()


def _encode_tokens_cut(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's `encode_text` computed only up to the last end-of-text position of the batch."""
    pool_type = getattr(model, "text_pool_type", None)
    if not hasattr(model, "token_embedding") or pool_type not in ("argmax", "eos"):
        return model.encode_text(tokens)  # custom text towers (HF): no cut
    if pool_type == "argmax":
        end = tokens.argmax(dim=-1)
    else:
        end = (tokens == model.text_eos_id).int().argmax(dim=-1)
    length = int(end.max()) + 1
    tokens = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    mask = model.attn_mask[:length, :length] if model.attn_mask is not None else None
    x = model.transformer(x, attn_mask=mask)
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), end]
    if isinstance(model.text_projection, torch.nn.Linear):
        return model.text_projection(x)
    return x @ model.text_projection if model.text_projection is not None else x


def load_model(name: str = DEFAULT_MODEL, pretrained: str | None = DEFAULT_PRETRAINED, *,
               device: str = "auto", precision: str = "auto",
               cache_dir: str | os.PathLike[str] | None = None) -> Encoder:
    """Load an open_clip model as an Encoder.

    `name` is any open_clip architecture (see `list_models()`) or "tiny", the offline test model with
    deterministic random weights. `pretrained` is an open_clip tag (e.g. "openai") or the path of a
    local checkpoint file; it is ignored for "tiny".
    """
    if name not in open_clip.list_models():
        raise ModelLoadError(f"Unknown model {name!r}. Use 'tiny' for the offline test model, "
                             f"or one of open_clip's models, e.g. {DEFAULT_MODEL!r} "
                             "(clipwidgets.list_models() lists them all).")
    device = resolve_device(device)
    precision = resolve_precision(precision, device)
    weights, pretrained_label = _resolve_weights(name, pretrained, cache_dir)
    # With weights to load, build straight in the target dtype; `tiny` keeps its fp32 random draws.
    build_dtype = _DTYPES[precision] if weights is not None else torch.float32
    with torch.random.fork_rng(devices=[]), _default_dtype(build_dtype), _no_random_init_warning():
        torch.manual_seed(TINY_SEED)
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=weights, load_weights=False, cache_dir=_str(cache_dir),
            **_tag_preprocess(name, pretrained))
    # Cast before the weights arrive, then read them tensor by tensor: no second full-precision copy
    # of the model is ever in memory (that copy is what pushed a notebook kernel past 2 GB).
    model = model.to(dtype=_DTYPES[precision])
    if weights is not None:
        try:
            _load_weights(model, weights)
        except (RuntimeError, OSError, KeyError, ValueError) as error:
            raise ModelLoadError(f"Could not load weights {pretrained_label!r} into {name!r}: {error}. "
                                 "Check that the checkpoint was saved from this architecture.") from error
    model = model.to(device)
    meta = {
        "name": name,
        "pretrained": pretrained_label,
        "embed_dim": _embed_dim(model),
        "preprocess": _preprocess_meta(model),
        "open_clip_version": open_clip.__version__,
    }
    return Encoder(model, preprocess, open_clip.get_tokenizer(name),
                   device=device, precision=precision, meta=meta)


def _tag_preprocess(name: str, pretrained: str | None) -> dict[str, Any]:
    """open_clip's `image_*` options for the preprocessing a pretrained tag prescribes ({} otherwise).

    The weights reach open_clip as a file path, so it cannot look the tag up itself.
    """
    cfg = open_clip.get_pretrained_cfg(name, pretrained) if pretrained else {}
    keys = ("mean", "std", "interpolation", "resize_mode")
    return {f"image_{key}": cfg[key] for key in keys if key in cfg}


_READ_BYTES = 8 << 20
_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
                       "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
                       "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


@torch.no_grad()
def _load_weights(model: torch.nn.Module, path: str) -> None:
    """Copy a checkpoint into `model` (already in its final dtype), one tensor at a time for safetensors.

    Tensors are read with plain file reads, not a memory map, so the file's pages never count as the
    process's memory. Files whose keys need open_clip's conversions (other layouts, resized position
    embeddings) go through `open_clip.load_checkpoint`, which holds one full copy in memory.
    """
    if path.endswith(".safetensors"):
        targets = model.state_dict()
        with open(path, "rb") as file:
            header_size = int.from_bytes(file.read(8), "little")
            entries = json.loads(file.read(header_size))
            entries.pop("__metadata__", None)
            if set(entries) == set(targets) and all(
                    tuple(entries[key]["shape"]) == tuple(targets[key].shape)
                    and entries[key]["dtype"] in _SAFETENSORS_DTYPES for key in entries):
                for key, target in targets.items():
                    _copy_tensor(file, 8 + header_size, entries[key], target)
                return
    open_clip.load_checkpoint(model, path)


def _copy_tensor(file: Any, data_start: int, entry: dict[str, Any], target: torch.Tensor) -> None:
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


@contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Create tensors in `dtype` (a model built for bf16 weights is never materialised in fp32)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded for model")


@contextmanager
def _no_random_init_warning() -> Iterator[None]:
    """Hide open_clip's "No pretrained weights loaded ... Model initialized randomly" warning, which it
    logs for every model it builds without loading weights: `load_model` loads them right after
    (and `tiny` is random by design), so to a user it would read as a failure that did not happen."""
    root = logging.getLogger()  # open_clip logs with logging.warning, i.e. on the root logger
    drop = _DropRandomInitWarning()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def _str(path: str | os.PathLike[str] | None) -> str | None:
    return None if path is None else str(path)


def _embed_dim(model: Any) -> int:
    projection = getattr(model, "text_projection", None)
    if isinstance(projection, torch.nn.Linear):
        return projection.out_features
    if projection is not None:
        return int(projection.shape[1])
    return int(model.visual.output_dim)


def _preprocess_meta(model: Any) -> dict[str, Any]:
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = cfg.get("size", model.visual.image_size)
    return {
        "image_size": list(size) if isinstance(size, (list, tuple)) else [size, size],
        "mean": list(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        "std": list(cfg.get("std", open_clip.OPENAI_DATASET_STD)),
        "interpolation": cfg.get("interpolation", "bicubic"),
        "resize_mode": cfg.get("resize_mode", "shortest"),
    }


def _resolve_weights(name: str, pretrained: str | None,
                     cache_dir: str | os.PathLike[str] | None) -> tuple[str | None, str]:
    """Return (what to pass open_clip as `pretrained`, the label stores record)."""
    if name == TINY_MODEL:
        return None, f"random-seed-{TINY_SEED}"
    if not pretrained:
        raise ModelLoadError(f"No weights given for {name!r}: pass a pretrained tag such as "
                             f"{DEFAULT_PRETRAINED!r} or the path of a checkpoint file.")
    path = Path(pretrained).expanduser()
    if path.is_file():
        return str(path), f"checkpoint:{path.name}:{path.stat().st_size}"
    if path.suffix in (".pt", ".pth", ".bin", ".safetensors") or os.sep in pretrained:
        raise ModelLoadError(f"Checkpoint file {str(path)!r} does not exist. Give the path of a "
                             "local checkpoint or a pretrained tag such as 'openai'.")
    tags = open_clip.list_pretrained_tags_by_model(name)
    if pretrained not in tags:
        raise ModelLoadError(f"{name!r} has no pretrained weights tagged {pretrained!r}; "
                             f"known tags: {', '.join(tags) or 'none'}. A checkpoint path works too.")
    return _cached_or_downloaded(name, pretrained, cache_dir), pretrained


def _cached_or_downloaded(name: str, tag: str, cache_dir: str | os.PathLike[str] | None) -> str:
    """Local path of the weights for (name, tag): from the cache, or downloaded when the hub answers."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cfg = open_clip.get_pretrained_cfg(name, tag)
    hub = cfg.get("hf_hub", "")
    if not hub:
        raise ModelLoadError(f"Weights {name}/{tag} are only published at {cfg.get('url')}; download "
                             "that file and pass its path as `pretrained`.")
    repo_id, filename = hub.rstrip("/"), open_clip.pretrained.HF_WEIGHTS_NAME
    if not hub.endswith("/"):
        repo_id, filename = os.path.split(hub)
    # open_clip prefers a safetensors copy when the hub has one; so do we.
    candidates = [*open_clip.pretrained._get_safe_alternatives(filename), filename]
    for candidate in candidates:
        cached = try_to_load_from_cache(repo_id, candidate, cache_dir=_str(cache_dir))
        if isinstance(cached, str):
            return cached
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    where = _str(cache_dir) or _hub_cache_dir()
    fix = ("Fix: connect to the internet once to cache them, set HF_HOME or cache_dir to a folder "
           "that already holds them, or pass a local checkpoint file as `pretrained`.")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise ModelLoadError(f"Weights for {name}/{tag} are not cached in {where} and "
                             f"HF_HUB_OFFLINE is set, so they cannot be downloaded. {fix}")
    if not _reachable(endpoint):
        raise ModelLoadError(f"Weights for {name}/{tag} are not cached in {where} and the model "
                             f"hub {endpoint} cannot be reached. {fix}")
    errors = []
    for candidate in candidates:
        try:
            return hf_hub_download(repo_id, candidate, cache_dir=_str(cache_dir))
        except Exception as error:  # any hub failure: try the next file, then report them all
            errors.append(f"{candidate}: {error}")
    raise ModelLoadError(f"Downloading weights for {name}/{tag} from {endpoint} failed "
                         f"({'; '.join(errors)}). {fix}")


def _hub_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _reachable(url: str, timeout: float = _HUB_PROBE_TIMEOUT_S) -> bool:
    """True when a TCP connection to the URL's host opens within `timeout` seconds."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False
