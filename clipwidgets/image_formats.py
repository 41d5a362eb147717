"""Image formats beyond Pillow's defaults: AVIF (Pillow's own codec) and HEIC/HEIF (pillow-heif).

Importing this module registers the HEIF opener with Pillow when `pillow-heif` is installed, and
the `pillow-avif-plugin` opener when Pillow was built without AVIF and that plugin is installed.
`clipwidgets.images` imports it, so every process that decodes images (the indexer's workers
included) can open phone photos. When a codec is missing, `missing_codec` says which package to
install, and such files are skipped with that reason instead of being called "not an image".
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from PIL import features

__all__ = ["AVIF_EXTENSIONS", "HEIF_EXTENSIONS", "avif_supported", "heif_supported", "missing_codec"]

HEIF_EXTENSIONS = frozenset({".heic", ".heif", ".hif"})
AVIF_EXTENSIONS = frozenset({".avif"})


def _register_heif() -> bool:
    try:
        pillow_heif = importlib.import_module("pillow_heif")
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    return True


def _register_avif() -> bool:
    if features.check("avif"):
        return True
    try:
        importlib.import_module("pillow_avif")  # registers its opener on import
    except ImportError:
        return False
    return True


_HEIF = _register_heif()
_AVIF = _register_avif()


def heif_supported() -> bool:
    """True when HEIC/HEIF files can be decoded here (pillow-heif is installed and registered)."""
    return _HEIF


def avif_supported() -> bool:
    """True when AVIF files can be decoded here (Pillow's AVIF codec, or pillow-avif-plugin)."""
    return _AVIF


def missing_codec(path: str | os.PathLike[str]) -> str | None:
    """Why a file of this type cannot be decoded here and what to install, or None if it can be."""
    suffix = Path(path).suffix.lower()
    if suffix in HEIF_EXTENSIONS and not heif_supported():
        return "HEIC/HEIF image, and the pillow-heif package is not installed: pip install pillow-heif"
    if suffix in AVIF_EXTENSIONS and not avif_supported():
        return ("AVIF image, and this Pillow has no AVIF codec: pip install --upgrade pillow (recent "
                "wheels include it) or pip install pillow-avif-plugin")
    return None
