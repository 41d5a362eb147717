"""One rule picks the model for a store, and the CLI, the app, the notebooks and `search()` all use it."""

from __future__ import annotations

import argparse

import pytest

from clipwidgets.model_choice import choose_model, encoder_for
from clipwidgets.settings import DEFAULT_MODEL, DEFAULT_PRETRAINED

LAION = {"name": "ViT-B-32", "pretrained": "laion2b_s34b_b79k", "embed_dim": 512}


@pytest.mark.parametrize(("store_meta", "model", "pretrained", "expected"), [
    (None, None, None, (DEFAULT_MODEL, DEFAULT_PRETRAINED)),  # no store: the defaults
    (LAION, None, None, ("ViT-B-32", "laion2b_s34b_b79k")),  # the store's model and weights
    (LAION, "ViT-B-32", None, ("ViT-B-32", "laion2b_s34b_b79k")),  # the store's model named: its weights
    (LAION, "ViT-L-14", None, ("ViT-L-14", DEFAULT_PRETRAINED)),  # another model: default weights
    (LAION, None, "openai", ("ViT-B-32", "openai")),  # explicit weights win
    (None, "ViT-B-32", "/ckpt/model.pt", ("ViT-B-32", "/ckpt/model.pt")),
    (None, "tiny", "openai", ("tiny", None)),  # the test model has no weights
    ({"name": "tiny", "pretrained": "random-seed-0"}, None, None, ("tiny", None)),
])
def test_choose_model(store_meta, model, pretrained, expected):
    assert choose_model(store_meta, model, pretrained) == expected


def test_encoder_for_loads_the_chosen_model_with_device_and_precision(tiny_encoder):
    encoder = encoder_for(tiny_encoder.meta, device="cpu", precision="fp32")
    assert encoder.meta == tiny_encoder.meta
    assert (encoder.device, encoder.precision) == ("cpu", "fp32")


@pytest.fixture
def loads(monkeypatch):
    """Records (name, pretrained) of every model loaded; loads the tiny model instead."""
    import clipwidgets.model

    calls = []
    real = clipwidgets.model.load_model

    def recording(name, pretrained=None, **options):
        calls.append((name, pretrained))
        return real("tiny", device="cpu", precision="fp32")

    monkeypatch.setattr(clipwidgets.model, "load_model", recording)
    return calls


def test_every_entry_point_chooses_the_same_model_for_a_store(store_factory, loads):
    from clipwidgets import search
    from clipwidgets.cli import _load_encoder
    from clipwidgets.notebook_env import notebook_config
    from clipwidgets.store import EmbeddingStore
    from clipwidgets.webapp import load_app_encoder

    path = store_factory(images=3)
    with EmbeddingStore.open(path) as store:
        meta = store.model_meta
    _load_encoder(argparse.Namespace(model=None, pretrained=None, precision="auto"), meta)
    load_app_encoder(path)
    search(path, "a photo", k=1)
    assert loads == [("tiny", None)] * 3
    loads.clear()
    _load_encoder(argparse.Namespace(model="ViT-B-32", pretrained=None, precision="auto"), meta)
    load_app_encoder(path, model="ViT-B-32")
    search(path, "a photo", k=1, model="ViT-B-32")
    notebook_config({"CLIPWIDGETS_MODEL": "ViT-B-32"}).load_encoder()
    assert loads == [("ViT-B-32", DEFAULT_PRETRAINED)] * 4
