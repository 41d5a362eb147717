"""Which model to load for a store: the one rule used by the CLI, the app, the notebooks and `search()`.

An explicit `model` wins, else the model recorded in the store, else `DEFAULT_MODEL`. The weights
are the explicit `pretrained`, else the store's when the model is the store's, else
`DEFAULT_PRETRAINED` (the `tiny` test model has none but a checkpoint file named explicitly).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .settings import DEFAULT_MODEL, DEFAULT_PRETRAINED, TINY_MODEL

if TYPE_CHECKING:
    from .model import Encoder

__all__ = ["choose_model", "encoder_for"]


def choose_model(store_meta: Mapping[str, Any] | None, model: str | None = None,
                 pretrained: str | None = None) -> tuple[str, str | None]:
    """(model name, pretrained tag or checkpoint) for a store whose model is `store_meta` (None: no store)."""
    store_name = store_meta["name"] if store_meta else None
    name = model or store_name or DEFAULT_MODEL
    if name == TINY_MODEL:  # random weights, unless a checkpoint file is named
        return name, pretrained if pretrained and Path(pretrained).expanduser().is_file() else None
    if pretrained:
        return name, pretrained
    if store_meta and name == store_name:
        return name, str(store_meta["pretrained"])
    return name, DEFAULT_PRETRAINED


def encoder_for(store_meta: Mapping[str, Any] | None, model: str | None = None,
                pretrained: str | None = None, *, device: str = "auto", precision: str = "auto") -> Encoder:
    """Load the encoder `choose_model` picks (see the module's docstring for the rule)."""
    from .model import load_model

    name, weights = choose_model(store_meta, model, pretrained)
    return load_model(name, weights, device=device, precision=precision)
