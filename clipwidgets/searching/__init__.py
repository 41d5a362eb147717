"""The parts of search, one responsibility each; `clipwidgets.searcher.Searcher` puts them together.

| module | responsibility |
|---|---|
| `options.py` | `SearchOptions`: page, filters, thresholds, validated once |
| `query_encoder.py` | `QueryEncoder`: query parts -> one unit vector; the text-embedding cache |
| `filters.py` | `Filters`: masks of the rows a search may return (glob, subset, exclude) |
| `kernels.py` | fast scoring kernels, chosen by the CPU's features and the matrix's size |
| `blocks.py` | `BlockMatrix`: the store's vector blocks (segments) scored in place, rows looked up |
| `fast.py` | `FastScores`: one query's fast scores kept per block; top-n merges each block's top-n |
| `scorers.py` | fast and exact scores by target (images, captions, both) |
| `index.py` | `VectorIndex.top(query, depth, mask)`: `ExactIndex` and `ApproximateIndex` (faiss) |
| `ranking.py` | min_score, adaptive cutoff, near-duplicate collapsing and paging of one ranking |
| `results.py` | `Hit`, `SearchResults`, `adaptive_cutoff` |
"""

from .options import SearchOptions
from .results import Hit, SearchResults, adaptive_cutoff

__all__ = ["Hit", "SearchOptions", "SearchResults", "adaptive_cutoff"]
