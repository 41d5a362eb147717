"""Encoder: an open_clip model with its preprocessing, returning L2-normalised float32 numpy arrays.

`load_model()` picks device and precision, resolves weights (a pretrained tag, a local checkpoint or the
offline `tiny` test model), and refuses quickly, with a fix, when weights are not cached and the hub
cannot be reached.
"""

from __future__ import annotations

import logging
import os
import socket
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import open_clip
import torch
from PIL import Image

from . import cpu
from .checkpoints import load_weights
from .errors import InvalidInputError, ModelLoadError
from .open_clip_compat import (
    check_version,
    embed_dim,
    encode_tokens_cut,
    hub_weight_candidates,
    preprocess_meta,
)
from .settings import DEFAULT_MODEL, DEFAULT_PRETRAINED, TINY_MODEL

__all__ = [
    "Encoder", "PRECISIONS", "PrecisionWarning", "TINY_SEED", "list_models", "load_model", "resolve_device",
    "resolve_precision"
]

TINY_SEED = 0
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_HUB_PROBE_TIMEOUT_S = 5.0
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


class PrecisionWarning(UserWarning):
    """bf16 was asked for on a CPU without native bfloat16; fp32 is used instead."""


def resolve_precision(precision: str, device: str, *, name: str | None = None) -> str:
    """Return "fp32", "bf16" or "fp16" for `precision` on `device`.

    "auto" is fp16 on CUDA. On CPU it is bf16 where the CPU computes bfloat16 natively (AVX512-BF16,
    AMX or ARM BF16: about 3x faster than fp32, embeddings within cosine 0.9999 of fp32's) and fp32
    elsewhere; the offline `tiny` test model (`name`) stays fp32, so tests agree on every CPU.
    On CPU, "bf16" casts the model's weights to bfloat16 (autocast is never used: on CPU it is
    slower than fp32). Without native bf16, torch emulates it about 7x slower than fp32, so asking
    for it there warns (PrecisionWarning, naming the missing CPU feature) and returns "fp32".
    """
    if precision not in PRECISIONS:
        raise InvalidInputError(f"Unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}.")
    on_cpu = device.startswith("cpu")
    if precision == "auto":
        if device.startswith("cuda"):
            return "fp16"
        return "bf16" if on_cpu and name != TINY_MODEL and cpu.native_bf16() else "fp32"
    if precision == "bf16" and on_cpu and not cpu.native_bf16():
        warnings.warn(f"precision 'bf16' was asked for, but this CPU has no native bfloat16 (it lacks "
                      f"{cpu.missing_bf16_feature()}): torch would emulate it, about 7x slower than fp32. "
                      "Using fp32 instead; pass precision 'fp32' or 'auto' (--precision auto) to choose "
                      "it without this warning.", PrecisionWarning, stacklevel=3)
        return "fp32"
    return precision


def list_models() -> list[str]:
    """Names of every model architecture open_clip knows, the `tiny` test model included."""
    return open_clip.list_models()


class Encoder:
    """A loaded CLIP model: `encode_images`, `encode_texts` and the metadata stores keep."""

    def __init__(self, model: torch.nn.Module, preprocess: Any, tokenizer: Any, *,
                 device: str, precision: str, meta: dict[str, Any]) -> None:
        self.model: Any = model.eval()  # an open_clip CLIP: encode_image, encode_text
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.device = device
        self.precision = precision
        self.dtype = _DTYPES[precision]
        self.meta = meta

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
        return _normalised_numpy(encode_tokens_cut(self.model, tokens))


def _normalised_numpy(features: torch.Tensor) -> np.ndarray:
    features = features.float()
    features = features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return features.cpu().numpy()


def load_model(name: str = DEFAULT_MODEL, pretrained: str | None = DEFAULT_PRETRAINED, *,
               device: str = "auto", precision: str = "auto",
               cache_dir: str | os.PathLike[str] | None = None) -> Encoder:
    """Load an open_clip model as an Encoder.

    `name` is any open_clip architecture (see `list_models()`) or "tiny", the offline test model with
    deterministic random weights. `pretrained` is an open_clip tag (e.g. "openai") or the path of a
    local checkpoint file; for "tiny" only a checkpoint file counts (else its random weights).
    `precision` is "auto", "fp32", "bf16" or "fp16" (see `resolve_precision`).
    """
    if name not in open_clip.list_models():
        raise ModelLoadError(f"Unknown model {name!r}. Use 'tiny' for the offline test model, "
                             f"or one of open_clip's models, e.g. {DEFAULT_MODEL!r} "
                             "(clipwidgets.list_models() lists them all).")
    check_version()
    device = resolve_device(device)
    precision = resolve_precision(precision, device, name=name)
    weights, pretrained_label = _resolve_weights(name, pretrained, cache_dir)
    # With weights to load, build straight in the target dtype; random `tiny` keeps its fp32 draws.
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
        load_weights(model, weights, model_name=name)
    model = model.to(device)
    meta = {
        "name": name,
        "pretrained": pretrained_label,
        "embed_dim": embed_dim(model),
        "preprocess": preprocess_meta(model),
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


def _resolve_weights(name: str, pretrained: str | None,
                     cache_dir: str | os.PathLike[str] | None) -> tuple[str | None, str]:
    """Return (what to pass open_clip as `pretrained`, the label stores record)."""
    if name == TINY_MODEL and not (pretrained and Path(pretrained).expanduser().is_file()):
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
    repo_id, filename = hub.rstrip("/"), None
    if not hub.endswith("/"):
        repo_id, filename = os.path.split(hub)
    candidates = hub_weight_candidates(filename)  # a safetensors copy first, as open_clip does
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
