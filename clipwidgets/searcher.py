"""Searcher: text, image, "more like this" and vector queries over an EmbeddingStore.

How a query is answered (see docs/search.md; the parts live in clipwidgets.searching):

1. The query becomes one unit vector (`QueryEncoder`): sum(weight * embedding(part)) over its parts,
   renormalised (`clipwidgets.query` parses "2:beach + sunset - people"); text embeddings are cached.
2. `SearchOptions` (validated once) say which page, filters and thresholds apply; `Filters` turn
   them into a boolean mask over the store's rows.
3. A vector index ranks the rows (`top(query, depth, mask)`): the exact index scores every row of
   the store's vector blocks with a fast kernel chosen for this CPU and size, then re-scores in
   float64 the candidates that can still reach the requested ranks, so ranks and scores equal a
   float64 reference ranking; the optional faiss index proposes candidates instead.
4. min_score, the adaptive cutoff, near-duplicate collapsing and paging apply to that ranking.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import InvalidInputError, StoreError
from .feedback import FeedbackWeights, apply_feedback
from .searching.blocks import BlockMatrix
from .searching.filters import Filters
from .searching.index import ApproximateIndex, ExactIndex, Scan
from .searching.kernels import calm
from .searching.options import DEFAULT_DEDUP, TARGETS, SearchOptions
from .searching.query_encoder import Part, QueryEncoder, negative_parts, query_texts
from .searching.ranking import Ranking, rank_page
from .searching.results import ADAPTIVE_MIN_GAP, Hit, QueryOrigin, SearchResults, adaptive_cutoff
from .searching.scorers import Captions, ImageScorer, scorer_for
from .store import EmbeddingStore
from .types import EncoderLike

if TYPE_CHECKING:
    from .explain import Explanation
    from .labels import ZeroShotLabels

__all__ = ["ADAPTIVE_MIN_GAP", "ANN_MODES", "ANN_THRESHOLD", "DEFAULT_DEDUP", "TARGETS", "Hit",
           "SearchOptions", "SearchResults", "Searcher", "adaptive_cutoff", "search"]

ANN_MODES = ("auto", "always", "never")
ANN_THRESHOLD = 2_000_000
_BATCH_CELLS = 1 << 26  # scores held at once by search_many (256 MB of float32)


class Searcher:
    """Ranks the images of a store for text, image, "more like this" and vector queries.

    `store` is an EmbeddingStore or the path of one (opened read-only, closed by `close()`).
    `encoder` (clipwidgets.model.Encoder) is needed for text and image queries only; it must be the
    model the store was built with. `cache_size`: how many text embeddings to keep, so repeated
    texts skip the encoder. `ann`: "auto" uses the approximate index saved beside the store (see
    clipwidgets.ann) when the store has at least `ann_threshold` images and the index is fresh,
    "always" requires it, "never" always searches exactly; `backend` says which is in use and
    `ann_note` why.

    Every search method takes its options as keywords (see SearchOptions for their defaults), or
    as a SearchOptions object plus keywords that change some of them (`search(q, opts, offset=24)`).
    """

    def __init__(self, store: EmbeddingStore | str | os.PathLike[str], encoder: EncoderLike | None = None, *,
                 cache_size: int = 256, ann: str = "auto", ann_threshold: int = ANN_THRESHOLD) -> None:
        if ann not in ANN_MODES:
            raise InvalidInputError(f"Unknown ann mode {ann!r}: use one of {', '.join(ANN_MODES)}.")
        self._owns_store = not isinstance(store, EmbeddingStore)
        self.store = store if isinstance(store, EmbeddingStore) else EmbeddingStore.open(store)
        self._ann_mode, self._ann_threshold = ann, ann_threshold
        try:
            self.queries = QueryEncoder(self.store.model_meta, cache_size=cache_size)
            self.encoder = encoder
            self._load()
        except BaseException:
            self.close()
            raise

    # ----- lifecycle -----

    def refresh(self) -> bool:
        """Reload the store when another process committed to it; True when something changed."""
        changed = self.store.refresh()
        if changed:
            self._load()
        return changed

    def close(self) -> None:
        """Close the store if this Searcher opened it."""
        if self._owns_store:
            self.store.close()

    def __enter__(self) -> Searcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Searcher({self.store!r}, images={self.num_images}, captions={len(self._captions)}, "
                f"backend={self.backend!r}, encoder={'yes' if self.encoder is not None else 'none'})")

    @property
    def encoder(self) -> EncoderLike | None:
        """The model for text and image queries (None: vector and more-like-this queries only)."""
        return self.queries.encoder

    @encoder.setter
    def encoder(self, encoder: EncoderLike | None) -> None:
        if encoder is not None:
            self.store.check_model(encoder.meta)
        self.queries.encoder = encoder

    @property
    def num_images(self) -> int:
        return len(self._paths)

    @property
    def dim(self) -> int:
        return self.queries.dim

    @property
    def kernel(self) -> str:
        """The fast kernel the last exact image search ran: "fp32" (BLAS on a float32 copy), "fp16", or
        "fp16, one thread" (see clipwidgets.searching.kernels); "" before the first search."""
        return ", ".join(sorted({kernel.last for kernel in self._images.kernels if kernel.last}))

    @property
    def backend(self) -> str:
        """"ann" when image searches use the approximate index, else "exact"."""
        return self._index.name

    def _load(self) -> None:
        store = self.store
        self._paths = store.image_paths()
        self._images = BlockMatrix(store.vector_blocks(), len(self._paths), self.dim)
        self._image_scorer = ImageScorer(self._images)
        self._exact = ExactIndex(self._image_scorer, self.num_images)
        self._captions = Captions(store.text_embeddings(), store.text_image_index(), self.num_images)
        self._filters = Filters(store, self._paths)
        ann = self._load_ann()
        self._index: ExactIndex | ApproximateIndex = self._exact if ann is None else ApproximateIndex(
            ann, self._image_scorer, self._exact, self.num_images)

    def _load_ann(self) -> Any:
        if self._ann_mode == "never":
            self.ann_note = "exact search (ann='never')."
            return None
        if self._ann_mode == "auto" and self.num_images < self._ann_threshold:
            self.ann_note = f"exact search ({self.num_images} images < ann_threshold {self._ann_threshold})."
            return None
        from .ann import ann_status

        index, self.ann_note = ann_status(self.store)
        if index is None and self._ann_mode == "always":
            raise InvalidInputError(f"ann='always' but {self.ann_note} Build the index with "
                                    "clipwidgets.ann.build_ann_index(store), or use ann='auto'.")
        return index

    # ----- queries -----

    def search(self, query: Any, options: SearchOptions | None = None, *, k: int | None = None,
               offset: int | None = None, negative: str | None = None, min_score: float | None = None,
               adaptive: bool | None = None, path_glob: str | None = None, subset: Any = None,
               exclude: Iterable[int | str] | None = None, dedup: float | bool | None = None,
               target: str | None = None, positive: Iterable[int | str] | None = None,
               negative_images: Iterable[int | str] | None = None,
               feedback_weights: FeedbackWeights | None = None) -> SearchResults:
        """Rank the store's images for `query`; returns the hits at ranks offset+1 .. offset+k.

        `query`: text (with the algebra of clipwidgets.query), a PIL image, a pathlib.Path of an
        image file, an image array (H, W, 3), a vector (D,), or a list of QueryPart / (weight, value)
        pairs mixing those. A str is always text: pass image files as Path. The options (see
        SearchOptions): `negative` text whose parts are subtracted ("grass + people"); `path_glob` a
        glob on the relative path ("dogs/*.jpg") or a plain prefix ("dogs/"); `subset` a subset name
        of the store (e.g. "test") or rows/paths; `exclude` rows or paths to leave out; `dedup` drop a
        hit whose cosine to a better hit is >= dedup (True = 0.95); `target` "images" scores image
        embeddings, "captions" each image by its best caption, "both" by the mean of the two.
        `positive` / `negative_images`: store images (rows or paths) marked relevant / irrelevant; the
        query moves by the Rocchio update with `feedback_weights` (clipwidgets.feedback).
        """
        start = time.perf_counter()
        chosen = _options(options, k=k, offset=offset, negative=negative, min_score=min_score,
                          adaptive=adaptive, path_glob=path_glob, subset=subset, exclude=exclude,
                          dedup=dedup, target=target)
        origin = QueryOrigin(query, chosen.negative, tuple(positive or ()), tuple(negative_images or ()),
                             feedback_weights)
        model_calls = self.queries.model_calls
        vector, description = self.queries.query_vector(query, negative=chosen.negative)
        vector, description = apply_feedback(self, vector, description, origin.positive,
                                             origin.negative_images, feedback_weights)
        with calm(self.queries.model_calls != model_calls):  # the model may run again soon: see kernels
            return self._page(vector, description, chosen, start, origin=origin)

    def explain(self, hit: Hit | int | str, query: Any = None, **options: Any) -> Explanation:
        """Why `hit` scores as it does: image score, best caption, each query part's share and an
        occlusion heat map (see clipwidgets.explain.explain). A Hit from this searcher's results
        carries its query (negative text and feedback marks included); give `query` (and those as
        options) for a row, a path, or to explain the hit for another query."""
        from .explain import explain

        origin = getattr(hit, "origin", None)
        if query is None:
            if origin is None:
                raise InvalidInputError(f"explain({hit!r}) needs the query: pass a Hit from search results, "
                                        "or the query too, as in searcher.explain(hit, 'a dog').")
            query = origin.query
            for name in ("negative", "positive", "negative_images", "feedback_weights"):
                value = getattr(origin, name)
                if value not in (None, ()):
                    options.setdefault(name, value)
        return explain(self, hit, query, **options)

    def classify(self, labels: Sequence[str], **options: Any) -> ZeroShotLabels:
        """The top label and its score for every image (see clipwidgets.labels.classify)."""
        from .labels import classify

        return classify(self, labels, **options)

    def more_like(self, item: int | str | os.PathLike[str], options: SearchOptions | None = None, *,
                  k: int | None = None, offset: int | None = None, negative: str | None = None,
                  min_score: float | None = None, adaptive: bool | None = None, path_glob: str | None = None,
                  subset: Any = None, exclude: Iterable[int | str] | None = None,
                  dedup: float | bool | None = None, target: str | None = None) -> SearchResults:
        """Images like the store's image `item` (row, relative path, or path inside the image root).

        The image itself is included and usually ranks first (score about 1.0); pass exclude=[item]
        to drop it. Takes the options of `search`; `negative` text needs an encoder.
        """
        start = time.perf_counter()
        chosen = _options(options, k=k, offset=offset, negative=negative, min_score=min_score,
                          adaptive=adaptive, path_glob=path_glob, subset=subset, exclude=exclude,
                          dedup=dedup, target=target)
        index = self.index_of(item)
        vector = self._images.gather(np.array([index]))[0].astype(np.float32)
        parts = [Part(1.0, vector, f"like:{self._paths[index]}"), *negative_parts(chosen.negative)]
        model_calls = self.queries.model_calls
        combined, description = self.queries.combine(parts)
        origin = QueryOrigin(vector, chosen.negative)
        with calm(self.queries.model_calls != model_calls):
            return self._page(combined, description, chosen, start, origin=origin)

    def search_many(self, queries: Sequence[Any], options: SearchOptions | None = None, *,
                    k: int | None = None, offset: int | None = None, negative: str | None = None,
                    min_score: float | None = None, adaptive: bool | None = None,
                    path_glob: str | None = None, subset: Any = None,
                    exclude: Iterable[int | str] | None = None, dedup: float | bool | None = None,
                    target: str | None = None) -> list[SearchResults]:
        """Search several queries at once (texts are encoded in one batch; one pass over the matrix
        scores a block of queries). Same options as `search`; returns one SearchResults per query."""
        start = time.perf_counter()
        chosen = _options(options, k=k, offset=offset, negative=negative, min_score=min_score,
                          adaptive=adaptive, path_glob=path_glob, subset=subset, exclude=exclude,
                          dedup=dedup, target=target)
        texts = [text for query in queries for text in query_texts(query)]
        model_calls = self.queries.model_calls
        self.queries.text_vectors(texts + [part.value for part in negative_parts(chosen.negative)])
        encoded = [self.queries.query_vector(query, negative=chosen.negative) for query in queries]
        origins = [QueryOrigin(query, chosen.negative) for query in queries]
        with calm(self.queries.model_calls != model_calls):
            return self._many(encoded, origins, chosen, start)

    def _many(self, encoded: list[tuple[np.ndarray, str]], origins: list[QueryOrigin], chosen: SearchOptions,
              start: float) -> list[SearchResults]:
        """The pages of several encoded queries: one pass over the matrix per block of queries."""
        if chosen.target != "images" or self._index.name != "exact" or not encoded:
            return [self._page(vector, description, chosen, start, origin=origin)
                    for (vector, description), origin in zip(encoded, origins, strict=True)]
        mask = self._mask(chosen)
        results = []
        group = max(1, _BATCH_CELLS // max(1, self.num_images))
        for first in range(0, len(encoded), group):
            chunk = encoded[first:first + group]
            scans = self._exact.scans(np.stack([vector for vector, _ in chunk]), mask)
            results += [self._page(vector, description, chosen, start, mask=mask, scan=scan, origin=origin)
                        for (vector, description), scan, origin
                        in zip(chunk, scans, origins[first:first + group], strict=True)]
        return results

    def search_vector(self, vector: np.ndarray, options: SearchOptions | None = None, *,
                      description: str = "vector", **changes: Any) -> SearchResults:
        """Rank for a query vector as it is (normalised to unit length); the options of `search`.
        Query adjustments (feedback, explanations) build their vector and search with it here."""
        start = time.perf_counter()
        chosen = _options(options, **changes)
        checked = self.queries.checked_vector(np.asarray(vector))
        return self._page(checked, description, chosen, start, origin=QueryOrigin(checked))

    def query_vector(self, query: Any, *, negative: str | None = None) -> tuple[np.ndarray, str]:
        """The unit float32 vector a query stands for, and a short description of the query."""
        return self.queries.query_vector(query, negative=negative)

    def index_of(self, item: int | str | os.PathLike[str]) -> int:
        """Row of a store image given as a row, a relative path, or a path inside the image root."""
        return self._filters.index_of(item)

    def exact_scores(self, vector: np.ndarray, rows: np.ndarray, target: str = "images") -> np.ndarray:
        """float64 scores of store rows `rows` for the unit vector `vector`, from the stored values."""
        scorer = scorer_for(target, self._image_scorer, self._captions)
        return scorer.exact(np.asarray(vector, dtype=np.float64), np.asarray(rows, dtype=np.int64))

    # ----- ranking -----

    def _mask(self, options: SearchOptions) -> np.ndarray | None:
        """The rows `options` let through (None: all), after checking that there is something to rank."""
        if self.num_images == 0:
            raise StoreError(f"The store {self.store.path} has no images yet: run `clipwidgets index "
                             f"IMAGES_DIR --store {self.store.path}` first.")
        if options.target != "images" and len(self._captions) == 0:
            raise InvalidInputError(f"target={options.target!r} needs captions but the store has none: use "
                                    "target='images', or add captions linked to the images "
                                    "(EmbeddingStore.add_texts, `clipwidgets import-npy --captions`).")
        return self._filters.allowed(options, self._captions.has_caption)

    def _page(self, vector: np.ndarray, description: str, options: SearchOptions, start: float, *,
              mask: np.ndarray | None = None, scan: Scan | None = None,
              origin: QueryOrigin | None = None) -> SearchResults:
        if scan is None:
            mask = self._mask(options)
        use_ann = self._index.name == "ann" and options.target == "images"
        if use_ann:
            ranking = Ranking(self._index, vector, mask)
        else:
            if scan is None:
                scorer = scorer_for(options.target, self._image_scorer, self._captions)
                scan = ExactIndex(scorer, self.num_images).scan(vector, mask)
            ranking = Ranking(self._exact, vector, mask, scan=scan)
        candidates = self.num_images if mask is None else int(np.count_nonzero(mask))
        rows, values, total = rank_page(ranking, options, candidates, self._images.gather)
        captioned = self._captions.has_caption[rows].tolist()  # the store is asked only for those
        hits = tuple(Hit(options.offset + i + 1, row, self._paths[row], value,  # rank, index, path, score
                         tuple(self.store.captions(row)) if has else (), origin)
                     for i, (row, value, has) in enumerate(zip(rows.tolist(), values.tolist(), captioned,
                                                               strict=True)))
        return SearchResults(hits=hits, total=total, k=options.k, offset=options.offset, query=description,
                             target=options.target, backend="ann" if use_ann else "exact",
                             elapsed_ms=(time.perf_counter() - start) * 1000)


def _options(options: SearchOptions | None, **given: Any) -> SearchOptions:
    """`options` (default: SearchOptions()) with the keywords that were given (not None) applied."""
    if options is None:
        return SearchOptions(**{name: value for name, value in given.items() if value is not None})
    if not isinstance(options, SearchOptions):
        raise InvalidInputError(f"options={options!r}: give a SearchOptions, or the options as keywords.")
    return options.with_changes(**given)


def search(store_path: str | os.PathLike[str], query: Any, options: SearchOptions | None = None, *,
           model: str | None = None, pretrained: str | None = None, **changes: Any) -> SearchResults:
    """One-line search: open the store, load its model (or `model`), rank, close the store.

    `clipwidgets.search("store/photos.h5", "a dog", k=5)`; options as in `Searcher.search`.
    """
    from .model_choice import encoder_for

    with Searcher(store_path) as searcher:
        needs_model = not (isinstance(query, np.ndarray) and query.ndim == 1)
        if needs_model:
            searcher.encoder = encoder_for(searcher.store.model_meta, model, pretrained)
        return searcher.search(query, options, **changes)
