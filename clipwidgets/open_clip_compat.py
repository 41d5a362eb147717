"""Every use of open_clip beyond its documented API goes through here, behind a version check.

clipwidgets reaches into open_clip in a few places: the text tower's layers (to cut token sequences
at the end-of-text token), the visual tower's preprocessing config, the name of the weights file on
the hub and its safetensors alternative. These are not promised to stay put between releases, so
they live in this one module and the installed release is checked against the range the tests ran
on (the same range pyproject.toml declares): older releases are refused, newer ones warned about.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable
from typing import Any

import open_clip
import torch

from .errors import ModelLoadError

__all__ = [
    "SUPPORTED_RANGE",
    "OpenClipVersionWarning",
    "check_version",
    "embed_dim",
    "encode_tokens_cut",
    "hub_weight_candidates",
    "parse_version",
    "preprocess_meta",
]

# [lowest, first untested): 3.0 added `load_weights=` to create_model_and_transforms, which loading
# the weights tensor by tensor needs; tests/test_model.py and test_open_clip_compat.py passed with 3.0.0
# and 3.3.0; releases from 3.4 on are untested. Keep in step with pyproject.toml.
SUPPORTED_RANGE = ((3, 0), (3, 4))


class OpenClipVersionWarning(UserWarning):
    """The installed open_clip is newer than the releases clipwidgets was tested with."""


def parse_version(text: str) -> tuple[int, int]:
    """(major, minor) of a version string such as '3.3.0' or '3.4.0.dev1'."""
    match = re.match(r"(\d+)\.(\d+)", text)
    if match is None:
        raise ValueError(f"Not a version: {text!r}")
    return int(match.group(1)), int(match.group(2))


def _range_text() -> str:
    (low_major, low_minor), (high_major, high_minor) = SUPPORTED_RANGE
    return f">={low_major}.{low_minor},<{high_major}.{high_minor}"


def check_version(version: str | None = None) -> None:
    """Raise ModelLoadError for an open_clip older than SUPPORTED_RANGE, warn for a newer one."""
    version = version or open_clip.__version__
    installed = parse_version(version)
    fix = f'pip install "open_clip_torch{_range_text()}"'
    if installed < SUPPORTED_RANGE[0]:
        raise ModelLoadError(f"open_clip_torch {version} is too old for clipwidgets (it needs "
                             f"{_range_text()}). Fix: {fix}")
    if installed >= SUPPORTED_RANGE[1]:
        warnings.warn(f"open_clip_torch {version} is newer than the releases clipwidgets was tested "
                      f"with ({_range_text()}); if loading or text encoding fails, run: {fix}",
                      OpenClipVersionWarning, stacklevel=2)


def hub_weight_candidates(filename: str | None) -> list[str]:
    """File names to look for in a hub repository, the safetensors alternatives first, as open_clip does.

    `filename` is the config's hub file name, or None for the repository's default weights file.
    """
    from open_clip import pretrained

    filename = filename or pretrained.HF_WEIGHTS_NAME
    safe: Iterable[str] = pretrained._get_safe_alternatives(filename)
    return [*safe, filename]


def encode_tokens_cut(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's `encode_text` computed only up to the last end-of-text position of the batch.

    With the causal mask, later positions cannot change earlier ones, so the result equals the full
    77-position pass. Custom text towers (Hugging Face ones) run open_clip's own `encode_text`.
    """
    pool_type = getattr(model, "text_pool_type", None)
    if not hasattr(model, "token_embedding") or pool_type not in ("argmax", "eos"):
        return model.encode_text(tokens)
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


def embed_dim(model: Any) -> int:
    """The embedding dimension of an open_clip model (its text projection's output)."""
    projection = getattr(model, "text_projection", None)
    if isinstance(projection, torch.nn.Linear):
        return projection.out_features
    if projection is not None:
        return int(projection.shape[1])
    return int(model.visual.output_dim)


def preprocess_meta(model: Any) -> dict[str, Any]:
    """The image preprocessing the model's visual tower expects (size, mean, std, resizing)."""
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = cfg.get("size", model.visual.image_size)
    return {
        "image_size": list(size) if isinstance(size, (list, tuple)) else [size, size],
        "mean": list(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        "std": list(cfg.get("std", open_clip.OPENAI_DATASET_STD)),
        "interpolation": cfg.get("interpolation", "bicubic"),
        "resize_mode": cfg.get("resize_mode", "shortest"),
    }
