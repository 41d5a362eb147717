"""Searcher: text, image, "more like this" and vector queries over an EmbeddingStore.

How a query is answered (see docs/search.md):

1. The query becomes one unit vector: sum(weight * embedding(part)) over its parts, renormalised
   (`clipwidgets.query` parses "2:beach + sunset - people"); text embeddings are cached.
2. A fast pass scores every item with a 16-bit kernel: the image matrix stays in memory as a
   float16 torch tensor and `torch.mv` reads it once (the memory-bandwidth floor). Filters are a
   boolean mask applied before top-k.
3. The candidates that can still reach the requested ranks, given a bound on the fast pass's
   rounding error, are re-scored in float64 from the stored values: ranks and scores equal a
   float64 reference ranking (ties broken by row).
4. min_score, the adaptive cutoff, near-duplicate collapsing and paging apply to that exact ranking.
"""

from __future__ import annotations

import fnmatch
import math
import os
import re
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, overload

import numpy as np
import torch
from PIL import Image

from .errors import ImageDecodeError, InvalidInputError, StoreError
from .query import QueryPart, format_query, parse_negative, parse_query
from .store import EmbeddingStore
from .types import EncoderLike

__all__ = [
    "ADAPTIVE_MIN_GAP", "ADAPTIVE_RATIO", "ADAPTIVE_WINDOW", "ANN_MODES", "ANN_THRESHOLD", "DEFAULT_DEDUP",
    "Hit", "SearchResults", "Searcher", "TARGETS", "adaptive_cutoff", "search"
]

TARGETS = ("images", "captions", "both")
ANN_MODES = ("auto", "always", "never")
ANN_THRESHOLD = 2_000_000
DEFAULT_DEDUP = 0.95
ADAPTIVE_WINDOW = 100
ADAPTIVE_RATIO = 8.0
ADAPTIVE_MIN_GAP = 0.01
# Bound on the fast pass's error besides the query's own float16 rounding: the float16 result is
# rounded by at most 2**-12 for |score| < 1, float32 accumulation adds ~D * 2**-24; 1e-3 is generous.
_KERNEL_EPS = 1e-3
_BATCH_EPS = 1e-4  # float32 batch kernel: no float16 rounding of queries or results
_EXACT_ROWS = 1 << 16  # rows widened to float64 at a time by the exact re-scoring
# The batch kernel widens blocks of this many rows to float32 for one matrix product each. It runs
# on one thread: hundreds of short multi-threaded operations in a row stall whenever another process
# holds a core (measured 4-6x slower than one thread on a busy 2-core machine).
_BATCH_ROWS = 2048
_BATCH_CELLS = 1 << 26  # scores held at once by the batch kernel (256 MB of float32)
_MASK_CACHE = 16
# Matrices up to this size are scored on one thread: a fraction of a millisecond either way, and
# immune to the stalls a busy machine causes in multi-threaded kernels (median 0.4 ms vs 16 ms at 10k
# rows while other processes kept both cores busy).
_ONE_THREAD_BYTES = 32 << 20


@dataclass(frozen=True)
class Hit:
    """One ranked result: 1-based rank, store row, relative path, cosine score, the image's captions."""

    rank: int
    index: int
    path: str
    score: float
    captions: tuple[str, ...] = ()

    def to_record(self) -> dict[str, Any]:
        """A JSON-ready dict: rank, index, path, score, and captions when the image has any."""
        record: dict[str, Any] = {"rank": self.rank, "index": self.index, "path": self.path,
                                  "score": self.score}
        if self.captions:
            record["captions"] = list(self.captions)
        return record


@dataclass(frozen=True)
class SearchResults(Sequence[Hit]):
    """The hits of one page plus what produced them.

    `total` is how many items the ranking holds for paging: those passing the filters (images with
    captions for target="captions") and `min_score`, cut at the adaptive gap when one was found;
    near-duplicate collapsing is not counted. `elapsed_ms` covers encoding and ranking.
    """

    hits: tuple[Hit, ...]
    total: int
    k: int
    offset: int
    query: str
    target: str = "images"
    backend: str = "exact"
    elapsed_ms: float = field(default=0.0, compare=False)

    @overload
    def __getitem__(self, index: int) -> Hit: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[Hit, ...]: ...

    def __getitem__(self, index: int | slice) -> Hit | tuple[Hit, ...]:
        return self.hits[index]

    def __len__(self) -> int:
        return len(self.hits)

    def __iter__(self) -> Iterator[Hit]:
        return iter(self.hits)

    def to_records(self) -> list[dict[str, Any]]:
        """The hits as JSON-ready dicts (see `Hit.to_record`)."""
        return [hit.to_record() for hit in self.hits]

    def to_text(self) -> str:
        """Deterministic plain text: one "rank. path  score" line per hit, scores to 4 decimals."""
        if not self.hits:
            return f"no results for {self.query!r}"
        return "\n".join(f"{hit.rank}. {hit.path}  {hit.score:.4f}" for hit in self.hits)

    def __str__(self) -> str:
        return self.to_text()

    def __repr__(self) -> str:
        return f"<SearchResults for {self.query!r}: {len(self.hits)} of {self.total}>\n{self.to_text()}"


def adaptive_cutoff(scores: Sequence[float] | np.ndarray) -> int | None:
    """How many of the descending `scores` come before a clear gap, or None when there is none.

    Among the first ADAPTIVE_WINDOW scores, the gap after rank i (1-based) is weighted by i, because
    in the tail of a score distribution gaps shrink roughly as 1/i: i * (s_i - s_(i+1)). The cut
    falls after the rank with the largest weighted gap when that is at least ADAPTIVE_RATIO times the
    median weighted gap and the raw gap is at least ADAPTIVE_MIN_GAP (cosine units).
    """
    window = np.asarray(scores, dtype=np.float64)[:ADAPTIVE_WINDOW]
    if len(window) < 3:
        return None
    gaps = window[:-1] - window[1:]
    weighted = gaps * np.arange(1, len(gaps) + 1)
    best = int(np.argmax(weighted))
    if gaps[best] >= ADAPTIVE_MIN_GAP and weighted[best] >= ADAPTIVE_RATIO * float(np.median(weighted)):
        return best + 1
    return None


class Searcher:
    """Ranks the images of a store for text, image, "more like this" and vector queries.

    `store` is an EmbeddingStore or the path of one (opened read-only, closed by `close()`).
    `encoder` (clipwidgets.model.Encoder) is needed for text and image queries only; it must be the
    model the store was built with. `cache_size`: how many text embeddings to keep, so repeated
    texts skip the encoder. `ann`: "auto" uses the approximate index saved beside the store (see
    clipwidgets.ann) when the store has at least `ann_threshold` images and the index is fresh,
    "always" requires it, "never" always searches exactly; `backend` says which is in use and
    `ann_note` why.
    """

    def __init__(self, store: EmbeddingStore | str | os.PathLike[str], encoder: EncoderLike | None = None, *,
                 cache_size: int = 256, ann: str = "auto", ann_threshold: int = ANN_THRESHOLD) -> None:
        if ann not in ANN_MODES:
            raise InvalidInputError(f"Unknown ann mode {ann!r}: use one of {', '.join(ANN_MODES)}.")
        self._owns_store = not isinstance(store, EmbeddingStore)
        self.store: EmbeddingStore = (store if isinstance(store, EmbeddingStore)
                                      else EmbeddingStore.open(store))
        self._encoder: EncoderLike | None = None
        self._ann_mode, self._ann_threshold = ann, ann_threshold
        self._text_cache: _LRU = _LRU(cache_size)
        try:
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
        return (f"Searcher({self.store!r}, images={self.num_images}, captions={self._caption_rows.size}, "
                f"backend={self.backend!r}, encoder={'yes' if self.encoder is not None else 'none'})")

    @property
    def encoder(self) -> EncoderLike | None:
        """The model for text and image queries (None: vector and more-like-this queries only)."""
        return self._encoder

    @encoder.setter
    def encoder(self, encoder: EncoderLike | None) -> None:
        if encoder is not None:
            self.store.check_model(encoder.meta)
        self._encoder = encoder

    @property
    def num_images(self) -> int:
        return len(self._paths)

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def backend(self) -> str:
        """"ann" when image searches use the approximate index, else "exact"."""
        return "ann" if self._ann is not None else "exact"

    def _load(self) -> None:
        store = self.store
        self._dim = int(store.model_meta["embed_dim"])
        self._paths = store.image_paths()
        self._images_np = np.ascontiguousarray(store.image_embeddings())
        fp16 = self._images_np.astype(np.float16, copy=False)
        self._images = torch.from_numpy(fp16)
        self._matrix_eps = 0.0 if self._images_np.dtype == np.float16 else 2.0**-11
        self._texts_np = np.ascontiguousarray(store.text_embeddings())
        self._texts = torch.from_numpy(self._texts_np.astype(np.float16, copy=False))
        linked = np.asarray(store.text_image_index(), dtype=np.int64)
        self._caption_rows = np.flatnonzero(linked >= 0)
        owners = linked[self._caption_rows]
        order = np.argsort(owners, kind="stable")
        self._caption_rows, owners = self._caption_rows[order], owners[order]
        self._caption_owner = torch.from_numpy(owners)
        self._caption_count = np.bincount(owners, minlength=self.num_images)
        self._caption_start = np.concatenate([[0], np.cumsum(self._caption_count)[:-1]]).astype(np.int64)
        self._has_caption = self._caption_count > 0
        self._masks: OrderedDict[str, np.ndarray] = OrderedDict()
        self._ann = self._load_ann()

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

    def search(self, query: Any, *, k: int = 10, offset: int = 0, negative: str | None = None,
               min_score: float | None = None, adaptive: bool = False, path_glob: str | None = None,
               subset: Any = None, exclude: Iterable[int | str] | None = None,
               dedup: float | bool | None = None, target: str = "images",
               positive: Iterable[int | str] | None = None,
               negative_images: Iterable[int | str] | None = None,
               feedback_weights: Any = None) -> SearchResults:
        """Rank the store's images for `query`; returns the hits at ranks offset+1 .. offset+k.

        `query`: text (with the algebra of clipwidgets.query), a PIL image, a pathlib.Path of an
        image file, an image array (H, W, 3), a vector (D,), or a list of QueryPart / (weight, value)
        pairs mixing those. A str is always text: pass image files as Path. `negative`: text whose
        parts are subtracted ("grass + people"). `path_glob`: a glob on the relative path
        ("dogs/*.jpg") or a plain prefix ("dogs/"). `subset`: a subset name of the store (e.g.
        "test") or rows/paths. `exclude`: rows or paths to leave out. `dedup`: drop a hit whose
        cosine to a better hit is >= dedup (True = 0.95). `target`: "images" scores image
        embeddings, "captions" scores each image by its best caption, "both" by the mean of the two.
        `positive` / `negative_images`: store images (rows or paths) marked relevant / irrelevant; the
        query moves by the Rocchio update with `feedback_weights` (clipwidgets.feedback.FeedbackWeights).
        """
        from .feedback import apply_feedback

        start = time.perf_counter()
        self._check_options(k, offset, min_score, target)
        vector, description = self.query_vector(query, negative=negative)
        vector, description = apply_feedback(self, vector, description, positive, negative_images,
                                             feedback_weights)
        return self._search_vector(vector, description, start, k=k, offset=offset, min_score=min_score,
                                   adaptive=adaptive, path_glob=path_glob, subset=subset, exclude=exclude,
                                   dedup=dedup, target=target)

    def explain(self, hit: Any, query: Any, **options: Any) -> Any:
        """Why `hit` (a Hit, row or path) scores as it does for `query`: image score, best caption,
        each query part's share and an occlusion heat map (see clipwidgets.explain.explain)."""
        from .explain import explain

        return explain(self, hit, query, **options)

    def classify(self, labels: Sequence[str], **options: Any) -> Any:
        """The top label and its score for every image (see clipwidgets.labels.classify)."""
        from .labels import classify

        return classify(self, labels, **options)

    def more_like(self, item: int | str | os.PathLike[str], **options: Any) -> SearchResults:
        """Images like the store's image `item` (row, relative path, or path inside the image root).

        The image itself is included and usually ranks first (score about 1.0); pass exclude=[item]
        to drop it. Takes the options of `search`; `negative` text needs an encoder.
        """
        start = time.perf_counter()
        self._check_options(options.get("k", 10), options.get("offset", 0), options.get("min_score"),
                            options.get("target", "images"))
        index = self.index_of(item)
        vector = self._images_np[index].astype(np.float32)
        parts = [(1.0, vector, f"like:{self._paths[index]}")]
        negative = parse_negative(options.pop("negative", None))
        parts += [(part.weight, part.text, part.text) for part in negative]
        combined, description = self._combine(parts)
        return self._search_vector(combined, description, start, **options)

    def search_many(self, queries: Sequence[Any], **options: Any) -> list[SearchResults]:
        """Search several queries at once (texts are encoded in one batch; one pass over the matrix
        scores a block of queries). Same options as `search`; returns one SearchResults per query."""
        start = time.perf_counter()
        self._check_options(options.get("k", 10), options.get("offset", 0), options.get("min_score"),
                            options.get("target", "images"))
        negative = options.pop("negative", None)
        texts = [q for q in queries if isinstance(q, str)]
        self._text_vectors([part.text for text in texts for part in parse_query(text)]
                           + [part.text for part in parse_negative(negative)])
        encoded = [self.query_vector(query, negative=negative) for query in queries]
        results = []
        if options.get("target", "images") != "images" or self._ann is not None or not encoded:
            return [self._search_vector(v, d, start, **options) for v, d in encoded]
        self._require_images()
        group = max(1, _BATCH_CELLS // max(1, self.num_images))
        for first in range(0, len(encoded), group):
            chunk = encoded[first:first + group]
            scores = self._batch_scores(np.stack([vector for vector, _ in chunk]))
            for row, (vector, description) in enumerate(chunk):
                approx = (scores[row], _BATCH_EPS + self._dim * 2.0**-23 + self._matrix_eps)
                results.append(self._search_vector(vector, description, start, approx=approx, **options))
        return results

    def query_vector(self, query: Any, *, negative: str | None = None) -> tuple[np.ndarray, str]:
        """The unit float32 vector a query stands for, and a short description of the query."""
        parts = [(weight, value, _label(value)) for weight, value in self._parts(query)]
        parts += [(part.weight, part.text, part.text) for part in parse_negative(negative)]
        return self._combine(parts)

    def index_of(self, item: int | str | os.PathLike[str]) -> int:
        """Row of a store image given as a row, a relative path, or a path inside the image root."""
        if isinstance(item, (bool, np.bool_)):
            raise InvalidInputError(f"{item!r} is not an image: give a row number or a path.")
        if isinstance(item, (int, np.integer)):
            index = int(item)
            if not 0 <= index < self.num_images:
                raise InvalidInputError(f"Image row {index} is out of range: the store has "
                                        f"{self.num_images} images (rows 0..{self.num_images - 1}).")
            return index
        if isinstance(item, (str, PurePath)):
            try:
                return self.store.index_of(item)
            except InvalidInputError:
                path = Path(item).expanduser()
                if path.is_absolute() or not path.exists():
                    raise
            return self.store.index_of(path.resolve())  # a path relative to the working directory
        raise InvalidInputError(f"{item!r} is not an image of the store: give a row number or a path.")

    # ----- query parts -> vector -----

    def _parts(self, query: Any) -> list[tuple[float, Any]]:
        if isinstance(query, str):
            return [(part.weight, part.text) for part in parse_query(query)]
        if isinstance(query, list) or (isinstance(query, tuple) and not _is_pair(query)):
            parts = [_as_part(item) for item in query]
            if not parts:
                raise InvalidInputError("The query is an empty list: give at least one part.")
            if all(weight < 0 for weight, _ in parts):
                raise InvalidInputError("The query has only negative parts: a query needs at least one "
                                        "positive part.")
            return parts
        return [(1.0, query)]

    def _combine(self, parts: list[tuple[float, Any, str]]) -> tuple[np.ndarray, str]:
        texts = self._text_vectors([value for _, value, _ in parts if isinstance(value, str)])
        total = np.zeros(self._dim, dtype=np.float64)
        for weight, value, _ in parts:
            vector = texts[value] if isinstance(value, str) else self._vector(value)
            total += weight * vector.astype(np.float64)
        norm = float(np.linalg.norm(total))
        description = format_query([QueryPart(weight, label) for weight, _, label in parts])
        if not math.isfinite(norm) or norm < 1e-6:
            raise InvalidInputError(f"The parts of {description!r} cancel out: change the weights or the "
                                    "texts so that something is left to search for.")
        return (total / norm).astype(np.float32), description

    def _vector(self, value: Any) -> np.ndarray:
        if isinstance(value, PurePath):
            from .images import load_image

            try:
                image = load_image(value)
            except ImageDecodeError as error:
                raise ImageDecodeError(f"Cannot search with image {value}: {error}. Give a readable "
                                       "image file (JPEG, PNG, WebP, ...).") from error
            return self._encode_image(image)
        if isinstance(value, Image.Image):
            return self._encode_image(value)
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        if isinstance(value, np.ndarray):
            if value.ndim == 1:
                return self._checked_vector(value)
            return self._encode_image(_array_image(value))
        raise InvalidInputError(f"Cannot search for a {type(value).__name__}: give text, a PIL image, a "
                                "pathlib.Path of an image file, an image array (H, W, 3) or a vector.")

    def _checked_vector(self, vector: np.ndarray) -> np.ndarray:
        if vector.shape != (self._dim,):
            raise InvalidInputError(f"The query vector has {vector.shape[0]} values but the store's "
                                    f"embeddings have {self._dim} ({self.store.model_meta['name']}).")
        vector = vector.astype(np.float64)
        norm = float(np.linalg.norm(vector))
        if not math.isfinite(norm) or norm == 0:
            raise InvalidInputError("The query vector is zero or not finite: it points nowhere.")
        return (vector / norm).astype(np.float32)

    def _text_vectors(self, texts: list[str]) -> dict[str, np.ndarray]:
        """{text: vector}, from the cache or encoded in one batch (then cached)."""
        if any(not text.strip() for text in texts):
            raise InvalidInputError("A text part of the query is empty: type some text.")
        vectors = {text: self._text_cache.get(text) for text in texts if text in self._text_cache}
        missing = [text for text in dict.fromkeys(texts) if text not in vectors]
        if missing:
            encoded = self._require_encoder("text").encode_texts(missing)
            for text, vector in zip(missing, encoded, strict=True):
                self._text_cache.put(text, vector)
                vectors[text] = vector
        return vectors

    def _encode_image(self, image: Image.Image) -> np.ndarray:
        return self._require_encoder("image").encode_images([image])[0]

    def _require_encoder(self, kind: str) -> EncoderLike:
        if self.encoder is None:
            meta = self.store.model_meta
            raise InvalidInputError(f"A {kind} query needs the model: pass encoder=load_model("
                                    f"{meta['name']!r}, {meta['pretrained']!r}) to Searcher (vector and "
                                    "more-like-this queries work without it).")
        return self.encoder

    # ----- ranking -----

    def _check_options(self, k: Any, offset: Any, min_score: Any, target: Any) -> None:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
            raise InvalidInputError(f"k={k!r}: the number of results must be a positive integer.")
        if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)) or offset < 0:
            raise InvalidInputError(f"offset={offset!r}: must be an integer >= 0 (the rank to start after).")
        if min_score is not None and not (isinstance(min_score, (int, float, np.floating))
                                          and -1 <= min_score <= 1):
            raise InvalidInputError(f"min_score={min_score!r}: a cosine score lies between -1 and 1.")
        if target not in TARGETS:
            raise InvalidInputError(f"target={target!r}: use one of {', '.join(TARGETS)}.")

    def _require_images(self) -> None:
        if self.num_images == 0:
            raise StoreError(f"The store {self.store.path} has no images yet: run `clipwidgets index "
                             f"IMAGES_DIR --store {self.store.path}` first.")

    def _search_vector(self, vector: np.ndarray, description: str, start: float, *, k: int = 10,
                       offset: int = 0, min_score: float | None = None, adaptive: bool = False,
                       path_glob: str | None = None, subset: Any = None,
                       exclude: Iterable[int | str] | None = None, dedup: float | bool | None = None,
                       target: str = "images", approx: tuple[torch.Tensor, float] | None = None
                       ) -> SearchResults:
        self._check_options(k, offset, min_score, target)
        self._require_images()
        if target != "images" and self._caption_rows.size == 0:
            raise InvalidInputError(f"target={target!r} needs captions but the store has none: use "
                                    "target='images', or add captions linked to the images "
                                    "(EmbeddingStore.add_texts, `clipwidgets import-npy --captions`).")
        threshold = _dedup_threshold(dedup)
        allowed = self._allowed(path_glob, subset, exclude, target)
        candidates = self.num_images if allowed is None else int(allowed.sum())
        use_ann = self._ann is not None and target == "images"
        scores, eps = (None, 0.0) if use_ann else (approx or self._approx_scores(vector, target))
        if scores is not None and allowed is not None:
            scores = scores.masked_fill(~torch.from_numpy(allowed), -math.inf)
        ranker = _Ranking(self, vector.astype(np.float64), target, scores, eps, allowed, candidates, use_ann)
        total = candidates
        if min_score is not None and not use_ann:
            total = ranker.count_at_least(min_score)
        cut = adaptive_cutoff(ranker.top(ADAPTIVE_WINDOW)[1]) if adaptive else None
        if cut is not None:
            total = min(total, cut)

        def ranked(depth: int) -> tuple[np.ndarray, np.ndarray]:
            rows, values = ranker.top(depth if cut is None else min(depth, cut))
            if min_score is not None:
                count = int(np.searchsorted(-values, -min_score, side="right"))
                rows, values = rows[:count], values[:count]
            return rows, values

        need = offset + k
        rows, values = ranked(need)
        if threshold is not None:
            rows, values = _collapse(ranked, self._images_np, rows, values, need, threshold)
        page = zip(rows[offset:need].tolist(), values[offset:need].tolist(), strict=True)
        hits = tuple(Hit(rank=offset + i + 1, index=row, path=self._paths[row], score=value,
                         captions=tuple(self.store.captions(row))) for i, (row, value) in enumerate(page))
        return SearchResults(hits=hits, total=total, k=k, offset=offset, query=description, target=target,
                             backend="ann" if use_ann else "exact",
                             elapsed_ms=(time.perf_counter() - start) * 1000)

    def _approx_scores(self, vector: np.ndarray, target: str) -> tuple[torch.Tensor, float]:
        """Fast scores of every image for `target` and a bound on their error."""
        query16 = vector.astype(np.float16)
        eps = _KERNEL_EPS + self._matrix_eps + float(np.linalg.norm(vector - query16.astype(np.float32)))
        query = torch.from_numpy(query16)
        if target == "images":
            return _matrix_vector(self._images, query), eps
        caption_scores = _matrix_vector(self._texts, query).float()[torch.from_numpy(self._caption_rows)]
        best = torch.full((self.num_images,), -math.inf).scatter_reduce_(
            0, self._caption_owner, caption_scores, reduce="amax")
        if target == "captions":
            return best, eps
        images = _matrix_vector(self._images, query).float()
        return torch.where(torch.from_numpy(self._has_caption), (images + best) / 2, images), eps

    def _batch_scores(self, vectors: np.ndarray) -> torch.Tensor:
        """Scores (B, N) in float32 for several queries: float16 blocks widened to float32, one GEMM each."""
        queries = torch.from_numpy(vectors)
        out = torch.empty((len(vectors), self.num_images), dtype=torch.float32)
        with _one_thread():
            for first in range(0, self.num_images, _BATCH_ROWS):
                block = self._images[first:first + _BATCH_ROWS].float()
                out[:, first:first + _BATCH_ROWS] = queries @ block.T
        return out

    def exact_scores(self, vector: np.ndarray, rows: np.ndarray, target: str = "images") -> np.ndarray:
        """float64 scores of store rows `rows` for the unit vector `vector`, from the stored values."""
        query = np.asarray(vector, dtype=np.float64)
        rows = np.asarray(rows, dtype=np.int64)
        if target == "images":
            return _dot64(self._images_np, rows, query)
        best = np.full(len(rows), -math.inf)
        has = self._has_caption[rows]
        if has.any():
            owners = rows[has]
            counts = self._caption_count[owners]
            firsts = np.cumsum(counts) - counts
            positions = np.repeat(self._caption_start[owners] - firsts, counts) + np.arange(counts.sum())
            scores = _dot64(self._texts_np, self._caption_rows[positions], query)
            best[has] = np.maximum.reduceat(scores, firsts)
        if target == "captions":
            return best
        images = _dot64(self._images_np, rows, query)
        return np.where(has, (images + best) / 2, images)

    # ----- filters -----

    def _allowed(self, path_glob: str | None, subset: Any, exclude: Iterable[int | str] | None,
                 target: str) -> np.ndarray | None:
        """A boolean mask of the rows that may be returned, or None when all may."""
        masks: list[np.ndarray] = []
        if target == "captions":
            masks.append(self._has_caption)
        if path_glob is not None:
            masks.append(self._path_mask(path_glob))
        if subset is not None:
            masks.append(self._subset_mask(subset))
        if exclude is not None:
            rows = self._rows(exclude, what="exclude")
            mask = np.ones(self.num_images, dtype=bool)
            mask[rows] = False
            masks.append(mask)
        if not masks:
            return None
        return np.all(masks, axis=0) if len(masks) > 1 else masks[0].copy()

    def _path_mask(self, pattern: str) -> np.ndarray:
        if not isinstance(pattern, str) or not pattern:
            raise InvalidInputError(f"path_glob={pattern!r}: give a glob such as 'dogs/*.jpg' or a prefix "
                                    "such as 'dogs/'.")
        if pattern not in self._masks:
            if any(char in pattern for char in "*?["):
                matches = re.compile(fnmatch.translate(pattern)).match
                mask = np.fromiter((matches(path) is not None for path in self._paths), bool, self.num_images)
            else:
                mask = np.fromiter((path.startswith(pattern) for path in self._paths), bool, self.num_images)
            self._masks[pattern] = mask
            while len(self._masks) > _MASK_CACHE:
                self._masks.popitem(last=False)
        return self._masks[pattern]

    def _subset_mask(self, subset: Any) -> np.ndarray:
        mask = np.zeros(self.num_images, dtype=bool)
        if isinstance(subset, str):
            subsets = self.store.subsets()
            if subset not in subsets:
                known = ", ".join(sorted(subsets)) or "none"
                raise InvalidInputError(f"subset={subset!r} is not a subset of {self.store.path} "
                                        f"(known: {known}).")
            mask[subsets[subset]] = True
        elif isinstance(subset, np.ndarray) and subset.dtype == bool:
            if subset.shape != (self.num_images,):
                raise InvalidInputError(f"A boolean subset needs one value per image ({self.num_images}), "
                                        f"not shape {subset.shape}.")
            mask[:] = subset
        else:
            mask[self._rows(subset, what="subset")] = True
        return mask

    def _rows(self, items: Any, *, what: str) -> np.ndarray:
        if isinstance(items, (str, PurePath, int, np.integer)):
            items = [items]
        try:
            return np.array([self.index_of(item) for item in items], dtype=np.int64)
        except TypeError as error:
            raise InvalidInputError(f"{what}={items!r}: give rows or paths of store images.") from error


class _Ranking:
    """The exact ranking of one query, computed lazily to the depth asked for."""

    def __init__(self, searcher: Searcher, query: np.ndarray, target: str, scores: torch.Tensor | None,
                 eps: float, allowed: np.ndarray | None, candidates: int, use_ann: bool) -> None:
        self.searcher, self.query, self.target = searcher, query, target
        self.scores, self.eps, self.allowed = scores, eps, allowed
        self.candidates, self.use_ann = candidates, use_ann
        self._best: tuple[np.ndarray, np.ndarray] = (np.zeros(0, dtype=np.int64), np.zeros(0))

    def top(self, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows and float64 scores of the best `depth` allowed items, best first (ties: lower row)."""
        depth = min(depth, self.candidates)
        if depth <= len(self._best[0]):
            return self._best[0][:depth], self._best[1][:depth]
        rows = self._ann_rows(depth) if self.use_ann else None
        if rows is None:
            rows = self._kernel_rows(depth)
        exact = self.searcher.exact_scores(self.query, rows, self.target)
        order = np.lexsort((rows, -exact))[:depth]
        self._best = (rows[order], exact[order])
        return self._best

    def _kernel_rows(self, depth: int) -> np.ndarray:
        """Every row whose fast score is within 2*eps of the depth-th fast score (enough for exactness:
        a row of the exact top `depth` has a fast score >= the depth-th fast score - 2 * eps)."""
        scores = self._fast_scores()
        fetch = min(self.candidates, max(depth + 32, 2 * depth))
        while True:
            values, rows = torch.topk(scores, fetch)
            if fetch == self.candidates or float(values[-1]) < float(values[depth - 1]) - 2 * self.eps:
                return rows.numpy()
            fetch = min(self.candidates, fetch * 4)

    def _fast_scores(self) -> torch.Tensor:
        if self.scores is None:  # ANN fell back to exact search
            scores, self.eps = self.searcher._approx_scores(self.query.astype(np.float32), self.target)
            if self.allowed is not None:
                scores = scores.masked_fill(~torch.from_numpy(self.allowed), -math.inf)
            self.scores = scores
        return self.scores

    def _ann_rows(self, depth: int) -> np.ndarray | None:
        """Candidates from the approximate index (over-fetched, then filtered), or None to go exact."""
        total = self.searcher.num_images
        fetch = depth * 4 if self.allowed is None else depth * 4 * max(1, total // max(1, self.candidates))
        rows = self.searcher._ann.search(self.query.astype(np.float32), min(total, fetch))
        if self.allowed is not None:
            rows = rows[self.allowed[rows]]
        return rows if len(rows) >= depth else None

    def count_at_least(self, threshold: float) -> int:
        """How many allowed items score >= threshold exactly (fast scores decide all but a thin band)."""
        scores = self._fast_scores()
        sure = int((scores >= threshold + self.eps).sum())
        band = torch.nonzero((scores >= threshold - self.eps) & (scores < threshold + self.eps)).flatten()
        if band.numel() == 0:
            return sure
        exact = self.searcher.exact_scores(self.query, band.numpy(), self.target)
        return sure + int((exact >= threshold).sum())


class _LRU:
    """Text -> float32 vector, least recently used dropped first; misses are filled by the caller."""

    def __init__(self, size: int) -> None:
        self.size = max(0, int(size))
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def get(self, key: str) -> np.ndarray:
        self._items.move_to_end(key)
        return self._items[key]

    def put(self, key: str, value: np.ndarray) -> None:
        self._items[key] = value
        while len(self._items) > max(self.size, 1):
            self._items.popitem(last=False)


def _collapse(ranked: Any, matrix: np.ndarray, rows: np.ndarray, values: np.ndarray, need: int,
              threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Greedy near-duplicate removal over the ranking `ranked(depth)`, fetching deeper ranks until
    `need` distinct hits remain or the ranking is exhausted."""
    depth = len(rows)
    while True:
        keep = _greedy_distinct(matrix[rows].astype(np.float32), threshold)
        if len(keep) >= need or len(rows) < depth:
            return rows[keep], values[keep]
        depth *= 4
        rows, values = ranked(depth)


def _dot64(matrix: np.ndarray, rows: np.ndarray, query: np.ndarray) -> np.ndarray:
    """float64 dot products of matrix[rows] with `query`, a block of rows at a time."""
    out = np.empty(len(rows))
    for first in range(0, len(rows), _EXACT_ROWS):
        block = rows[first:first + _EXACT_ROWS]
        out[first:first + len(block)] = matrix[block].astype(np.float64) @ query
    return out


def _matrix_vector(matrix: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    """matrix @ vector in float16 (float32 accumulation); small matrices on one thread."""
    if matrix.numel() * matrix.element_size() > _ONE_THREAD_BYTES:
        return torch.mv(matrix, vector)
    with _one_thread():
        return torch.mv(matrix, vector)


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run the block with torch's intra-op parallelism set to one thread."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _greedy_distinct(vectors: np.ndarray, threshold: float) -> list[int]:
    """Positions kept when walking `vectors` in order and dropping those with cosine >= threshold to a
    kept one."""
    kept: list[int] = []
    for i, vector in enumerate(vectors):
        if not kept or float(np.max(vectors[kept] @ vector)) < threshold:
            kept.append(i)
    return kept


def _dedup_threshold(dedup: float | bool | None) -> float | None:
    if dedup is None or dedup is False:
        return None
    if dedup is True:
        return DEFAULT_DEDUP
    if not isinstance(dedup, (int, float)) or not 0 < dedup <= 1:
        raise InvalidInputError(f"dedup={dedup!r}: give a cosine threshold in (0, 1], e.g. 0.95, or True.")
    return float(dedup)


def _is_pair(value: tuple) -> bool:
    return len(value) == 2 and isinstance(value[0], (int, float)) and not isinstance(value[0], bool)


def _as_part(item: Any) -> tuple[float, Any]:
    if isinstance(item, QueryPart):
        weight, value = item.weight, item.text
    elif isinstance(item, tuple) and _is_pair(item):
        weight, value = float(item[0]), item[1]
    else:
        raise InvalidInputError(f"Query part {item!r}: a list query holds QueryPart(weight, text) or "
                                "(weight, value) pairs, e.g. [(2, 'beach'), (-1, 'people')].")
    if not math.isfinite(weight) or weight == 0:
        raise InvalidInputError(f"Query part {item!r}: the weight must be a non-zero number.")
    return weight, value


def _label(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, PurePath):
        return f"image:{value.name}"
    if isinstance(value, Image.Image):
        return "image"
    if isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 1:
        return "vector"
    return "image"


def _array_image(array: np.ndarray) -> Image.Image:
    """An (H, W), (H, W, 3) or (H, W, 4) array as a PIL image; floats are read as 0..1."""
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise InvalidInputError(f"An image array must have shape (H, W, 3), (H, W, 4) or (H, W), not "
                                f"{array.shape}; a query vector has shape (D,).")
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.floating) or not np.isfinite(array).all():
            raise InvalidInputError(f"An image array must be uint8 (0..255) or float (0..1), "
                                    f"not {array.dtype}.")
        array = (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(array)).convert("RGB")


def search(store_path: str | os.PathLike[str], query: Any, *, k: int = 10, model: str | None = None,
           pretrained: str | None = None, **options: Any) -> SearchResults:
    """One-line search: open the store, load its model (or `model`), rank, close the store.

    `clipwidgets.search("store/photos.h5", "a dog", k=5)`; options as in `Searcher.search`.
    """
    from .model_choice import encoder_for

    with Searcher(store_path) as searcher:
        needs_model = not (isinstance(query, np.ndarray) and query.ndim == 1)
        if needs_model:
            searcher.encoder = encoder_for(searcher.store.model_meta, model, pretrained)
        return searcher.search(query, k=k, **options)
