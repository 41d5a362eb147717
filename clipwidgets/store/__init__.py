"""The embedding store: one collection's image and text embeddings, with the model and files they came from.

Format 2 (docs/store.md): the `.h5` the user names is a small manifest, replaced atomically by every
commit; image rows live in immutable, memory-mapped segment files in `<name>.h5.d/`. Modules:

- `format`: names, versions, root attributes, model metadata, refusing bad files
- `atomic`: fsync, write-then-rename, the writer lock, leftovers of killed writers
- `segments`, `texts`, `manifest`, `format_v1`: the files, and reading v1
- `snapshot`: one state of a store and its numberings (ids, segment rows, public rows)
- `merge`: the tiered merge policy; `files`: reading a store and committing a snapshot
- `validation`: checks of what callers pass in (paths, vectors) and of paths read back
- `view`, `embedding_store`: the `EmbeddingStore` API (reads, then writes)
"""

from __future__ import annotations

from .embedding_store import EmbeddingStore
from .format import DTYPES, FORMAT_NAME, FORMAT_VERSION, read_model_meta
from .manifest import segments_folder
from .snapshot import SkippedFile
from .validation import NORM_TOLERANCE
from .view import StoreDiff, VectorBlock

__all__ = ["DTYPES", "FORMAT_NAME", "FORMAT_VERSION", "NORM_TOLERANCE", "EmbeddingStore", "SkippedFile",
           "StoreDiff", "VectorBlock", "read_model_meta", "segments_folder"]
