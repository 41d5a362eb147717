"""clipwidgets: semantic image search with CLIP, built for Jupyter.

The public API below is imported on first use, so `import clipwidgets` (and the CLI's `--help`)
stays fast; `from clipwidgets import SearchPanel` works as usual.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "model",
    "list_models": "model",
    "Encoder": "model",
    "encoder_for": "model_choice",
    "EmbeddingStore": "store",
    "SkippedFile": "store",
    "StoreDiff": "store",
    "import_npy": "npy_import",
    "index_images": "indexing",
    "IndexReport": "indexing",
    "load_image": "images",
    "scan_images": "images",
    "make_thumbnail": "images",
    "Searcher": "searcher",
    "SearchOptions": "searcher",
    "SearchResults": "searcher",
    "Hit": "searcher",
    "search": "searcher",
    "parse_query": "query",
    "QueryPart": "query",
    "SearchPanel": "widgets",
    "FeedbackWeights": "feedback",
    "EmbeddingMap": "embedding_map",
    "find_duplicates": "duplicates",
    "DuplicateReview": "duplicates_view",
    "evaluate_store": "evaluation",
    "ClipWidgetsError": "errors",
    "ModelLoadError": "errors",
    "StoreError": "errors",
    "ModelMismatchError": "errors",
    "InvalidInputError": "errors",
    "ImageDecodeError": "errors",
    "DatasetError": "errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'clipwidgets' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
