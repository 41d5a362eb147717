"""Every setting's name and default, in one place: environment variables, default paths, model, server.

Relative default paths are taken from the current folder by the CLI and the app, and from the
repository root by the notebooks (see `clipwidgets.notebook_env`).
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "DEFAULT_DATA",
    "DEFAULT_HOST",
    "DEFAULT_IMAGES",
    "DEFAULT_MODEL",
    "DEFAULT_PORT",
    "DEFAULT_PRETRAINED",
    "DEFAULT_STORE",
    "ENV_DATA",
    "ENV_FLICKR8K_URL",
    "ENV_MODEL",
    "ENV_PRETRAINED",
    "ENV_SEARCH_CPU",
    "ENV_STORE",
    "TINY_MODEL",
]

# Environment variables (read by the notebooks and the app's kernel; the app's launcher sets them).
ENV_MODEL = "CLIPWIDGETS_MODEL"  # open_clip model name, or "tiny"
ENV_PRETRAINED = "CLIPWIDGETS_PRETRAINED"  # pretrained tag or checkpoint file
ENV_DATA = "CLIPWIDGETS_DATA"  # the Flickr8k-shaped data folder
ENV_STORE = "CLIPWIDGETS_STORE"  # the HDF5 store
ENV_FLICKR8K_URL = "CLIPWIDGETS_FLICKR8K_URL"  # a mirror of the Flickr8k archives
# Search kernels chosen as on a lesser CPU class: "avx2" or "other" (benchmarks emulating an AVX2-only
# CPU; see clipwidgets.searching.kernels). A class above the CPU's own is never used.
ENV_SEARCH_CPU = "CLIPWIDGETS_SEARCH_CPU"

# The model: ViT-B/32 with OpenAI's weights; "tiny" is the offline test model (random weights).
DEFAULT_MODEL = "ViT-B-32-quickgelu"
DEFAULT_PRETRAINED = "openai"
TINY_MODEL = "tiny"

# Where data and the store live.
DEFAULT_DATA = Path("Data")
DEFAULT_IMAGES = DEFAULT_DATA / "Images"
DEFAULT_STORE = Path("store") / "flickr8k.h5"

# The app's server.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
