"""One small exception tree. Every message names the bad value and the next step."""

from __future__ import annotations

__all__ = [
    "ClipWidgetsError", "DatasetError", "ImageDecodeError", "InvalidInputError", "ModelLoadError",
    "ModelMismatchError", "StoreError"
]


class ClipWidgetsError(Exception):
    """Base class for every error clipwidgets raises on purpose."""


class ModelLoadError(ClipWidgetsError):
    """A model or its weights could not be loaded (unknown name, offline, bad checkpoint)."""


class StoreError(ClipWidgetsError):
    """A store file is missing, not ours, corrupt, or too new."""


class ModelMismatchError(StoreError):
    """Embeddings of one model were mixed with those of another."""


class InvalidInputError(ClipWidgetsError, ValueError):
    """A value passed by the user is out of range or malformed (query, k, vectors, paths)."""


class ImageDecodeError(ClipWidgetsError):
    """An image file could not be decoded; the message says why."""


class DatasetError(ClipWidgetsError):
    """A dataset could not be downloaded, verified, extracted or parsed."""
