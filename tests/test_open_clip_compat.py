"""The open_clip compatibility layer: declared version range, version check, wrapped internals."""

from __future__ import annotations

import sys
from pathlib import Path

import open_clip
import pytest
import torch
from packaging.requirements import Requirement
from packaging.version import Version

from clipwidgets.errors import ModelLoadError
from clipwidgets.open_clip_compat import (
    SUPPORTED_RANGE,
    OpenClipVersionWarning,
    check_version,
    embed_dim,
    encode_tokens_cut,
    hub_weight_candidates,
    parse_version,
    preprocess_meta,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")


def declared_requirement() -> Requirement:
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    dependencies = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    return next(Requirement(line) for line in dependencies if line.startswith("open_clip_torch"))


def test_installed_open_clip_is_inside_the_declared_range():
    requirement = declared_requirement()
    installed = Version(open_clip.__version__)
    assert requirement.specifier.contains(installed), (installed, str(requirement.specifier))
    assert any(spec.operator == "<" for spec in requirement.specifier), "the upper bound is missing"


def test_declared_range_is_the_checked_range():
    low, high = SUPPORTED_RANGE
    specifier = declared_requirement().specifier
    assert specifier.contains(f"{low[0]}.{low[1]}.0") and not specifier.contains(f"{high[0]}.{high[1]}.0")
    assert not specifier.contains(f"{low[0]}.{low[1] - 1}.99" if low[1] else f"{low[0] - 1}.99.0")


def test_version_check():
    check_version()  # the installed release: silent (pytest turns our warnings into errors)
    with pytest.raises(ModelLoadError, match=r"2\.24\.0 is too old.*pip install"):
        check_version("2.24.0")
    high = SUPPORTED_RANGE[1]
    with pytest.warns(OpenClipVersionWarning, match="newer than the releases"):
        check_version(f"{high[0]}.{high[1]}.0")
    assert parse_version("3.4.0.dev1") == (3, 4)
    with pytest.raises(ValueError):
        parse_version("main")


def test_hub_weight_candidates_prefer_safetensors():
    from open_clip import pretrained

    default = hub_weight_candidates(None)
    assert default[-1] == pretrained.HF_WEIGHTS_NAME and default[0].endswith(".safetensors")
    assert hub_weight_candidates("weights.bin") == ["weights.safetensors", "weights.bin"]


def test_model_introspection_on_tiny(tiny_encoder):
    assert embed_dim(tiny_encoder.model) == 64
    meta = preprocess_meta(tiny_encoder.model)
    assert meta["image_size"] == [32, 32] and len(meta["mean"]) == len(meta["std"]) == 3
    tokens = tiny_encoder.tokenizer(["a red car", "x"])
    with torch.no_grad():
        torch.testing.assert_close(encode_tokens_cut(tiny_encoder.model, tokens),
                                   tiny_encoder.model.encode_text(tokens), atol=1e-5, rtol=1e-4)
