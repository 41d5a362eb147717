"""Search over several vector blocks (the segmented store's layout): the same results as one block.

A real store is opened and its `vector_blocks()` replaced by blocks in another order, with deleted
entries (row -1) whose vectors would outrank everything if they leaked, and one block memory-mapped
read-only. Both ways of holding blocks are checked: gathered into one array (small collections) and
scored in place (large ones, forced here by a zero float32-copy limit).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from clipwidgets.errors import StoreError
from clipwidgets.searcher import Searcher
from clipwidgets.searching import kernels
from clipwidgets.store import EmbeddingStore, VectorBlock

COUNT = 3000
DIM = 64  # the tiny model's embedding size


def unit_rows(rng: np.random.Generator, count: int) -> np.ndarray:
    rows = rng.standard_normal((count, DIM))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def build_store(path, meta, vectors, *, texts=None, text_vectors=None, links=None, subsets=None):
    """A real store at `path` holding `vectors` as rows r/000000.jpg, r/000001.jpg, ..."""
    count = len(vectors)
    with EmbeddingStore.create(path, meta, path.parent) as store:
        store.add_images([f"r/{i:06d}.jpg" for i in range(count)], vectors, sizes=[1] * count,
                         mtimes_ns=[1] * count, widths=[8] * count, heights=[8] * count)
        if texts:
            store.add_texts(texts, text_vectors, image_index=links, sources=["test"] * len(texts))
        for name, members in (subsets or {}).items():
            store.set_subset(name, members)
    return path


def reference_ranking(matrix: np.ndarray, query: np.ndarray):
    """Rows and scores by a float64 ranking of the stored values (ties: lower row first)."""
    scores = matrix.astype(np.float64) @ query.astype(np.float64)
    order = np.lexsort((np.arange(len(matrix)), -scores))
    return order, scores[order]


@pytest.fixture(scope="module")
def segment_store(tmp_path_factory, tiny_encoder):
    """3000 random unit vectors, captions for the second half, subset "even", rows r/000000.jpg..."""
    rng = np.random.default_rng(21)
    folder = tmp_path_factory.mktemp("segments")
    build_store(folder / "seg.h5", tiny_encoder.meta, unit_rows(rng, COUNT),
                texts=[f"t{i}" for i in range(1500)], text_vectors=unit_rows(rng, 1500),
                links=list(range(1500, COUNT)),
                subsets={"even": [f"r/{i:06d}.jpg" for i in range(0, COUNT, 2)]})
    return folder / "seg.h5"


def split_blocks(matrix: np.ndarray, folder, query: np.ndarray) -> list[VectorBlock]:
    """Four blocks holding every row once, out of order, with deleted entries equal to `query`."""
    bounds = [0, 700, 1800, 2500, COUNT]
    blocks = []
    for first, last in zip(bounds[:-1], bounds[1:], strict=True):
        rows = np.arange(first, last, dtype=np.int64)
        vectors = matrix[first:last]
        dead = np.repeat(query[None, :].astype(matrix.dtype), 5, axis=0)  # would score 1.0 if leaked
        vectors = np.concatenate([dead[:2], vectors[::-1], dead[2:]])
        rows = np.concatenate([[-1, -1], rows[::-1], [-1, -1, -1]])
        blocks.append(VectorBlock(vectors, rows))
    path = folder / "block.npy"
    np.save(path, blocks[1].vectors)
    blocks[1] = VectorBlock(np.load(path, mmap_mode="r"), blocks[1].rows)  # read-only memory map
    return [blocks[2], blocks[0], blocks[3], blocks[1]]


@pytest.fixture(params=["gathered", "in place"])
def pair(request, segment_store, tmp_path, monkeypatch):
    """(Searcher over one block, Searcher over split blocks, the query the dead rows equal)."""
    if request.param == "in place":
        monkeypatch.setattr(kernels, "FP32_COPY_BYTES", dict.fromkeys(kernels.FP32_COPY_BYTES, 0))
        monkeypatch.setattr(kernels, "INT8_COPY_BYTES", 0)
    query = unit_rows(np.random.default_rng(5), 1)[0]
    plain = Searcher(segment_store)
    store = EmbeddingStore.open(segment_store)
    blocks = split_blocks(store.image_embeddings(), tmp_path, query)
    store.vector_blocks = lambda: blocks  # type: ignore[method-assign]
    split = Searcher(store)
    assert split._images.single == (request.param == "gathered")
    yield plain, split, query
    plain.close()
    split.close()
    store.close()


def test_split_blocks_rank_like_one_block_and_like_float64(pair):
    plain, split, query = pair
    for offset in (0, 100):
        found = split.search(query, k=50, offset=offset)
        assert found.hits == plain.search(query, k=50, offset=offset).hits
        rows, scores = reference_ranking(plain.store.image_embeddings(), query)
        assert [h.index for h in found] == rows[offset:offset + 50].tolist()
        np.testing.assert_allclose([h.score for h in found], scores[offset:offset + 50], atol=1e-12)
        assert found.total == COUNT


def test_split_blocks_keep_filters_thresholds_dedup_and_captions(pair):
    plain, split, query = pair
    cases = [dict(k=20, subset="even"), dict(k=20, path_glob="r/0012*"), dict(k=20, exclude=[0, 5, 7]),
             dict(k=30, min_score=0.2), dict(k=10, dedup=0.3), dict(k=15, target="captions"),
             dict(k=15, target="both"), dict(k=10, adaptive=True)]
    for options in cases:
        mine, theirs = split.search(query, **options), plain.search(query, **options)
        assert (mine.hits, mine.total) == (theirs.hits, theirs.total), options
    assert split.more_like(1234, k=5).hits == plain.more_like(1234, k=5).hits
    assert split.more_like(1234, k=1)[0].index == 1234
    many = unit_rows(np.random.default_rng(8), 4)
    assert [r.hits for r in split.search_many(list(many), k=12, subset="even")] == \
           [plain.search(q, k=12, subset="even").hits for q in many]
    rows = np.array([2999, 0, 1500, 701])
    np.testing.assert_array_equal(split.exact_scores(query, rows, "both"),
                                  plain.exact_scores(query, rows, "both"))


def test_blocks_that_miss_a_row_are_refused(segment_store):
    store = EmbeddingStore.open(segment_store)
    matrix = store.image_embeddings()
    rows = np.arange(COUNT, dtype=np.int64)
    rows[17] = -1
    store.vector_blocks = lambda: [VectorBlock(matrix, rows)]  # type: ignore[method-assign]
    with pytest.raises(StoreError, match="2999 live rows but it has 3000 images"):
        Searcher(store)
    assert not store.closed
    store.close()


def test_approximate_index_over_split_blocks(segment_store, tmp_path):
    pytest.importorskip("faiss")
    from clipwidgets.ann import build_ann_index

    path = tmp_path / "ann.h5"
    path.write_bytes(segment_store.read_bytes())
    segments = segment_store.with_name(segment_store.name + ".d")
    if segments.is_dir():  # a format-2 store is its file and the segment folder beside it
        shutil.copytree(segments, path.with_name(path.name + ".d"))
    with EmbeddingStore.open(path) as writer:
        build_ann_index(writer)
    query = unit_rows(np.random.default_rng(6), 1)[0]
    store = EmbeddingStore.open(path)
    blocks = split_blocks(store.image_embeddings(), tmp_path, query)
    store.vector_blocks = lambda: blocks  # type: ignore[method-assign]

    def whole_matrix() -> np.ndarray:
        raise AssertionError("search loaded the whole matrix instead of reading the blocks")
    store.image_embeddings = whole_matrix  # type: ignore[method-assign]
    with Searcher(store, ann="always") as approximate, Searcher(path, ann="never") as exact:
        found = approximate.search(query, k=10)
        assert found.backend == "ann"
        for hit in found:  # dead rows never come back, scores are exact
            assert hit.score == pytest.approx(exact.exact_scores(query, np.array([hit.index]))[0], abs=1e-12)
        few = [5, 6, 7]
        assert approximate.search(query, k=3, subset=few).hits == exact.search(query, k=3, subset=few).hits
    store.close()


def test_ranking_is_exact_over_blocks_of_close_vectors(tmp_path, tiny_encoder, monkeypatch):
    """Vectors closer together than float16 resolution, scored in place in several blocks."""
    monkeypatch.setattr(kernels, "FP32_COPY_BYTES", dict.fromkeys(kernels.FP32_COPY_BYTES, 0))
    monkeypatch.setattr(kernels, "INT8_COPY_BYTES", 0)
    rng = np.random.default_rng(3)
    base = unit_rows(rng, 1)[0]
    rows = base + rng.standard_normal((2000, DIM)).astype(np.float32) * 2e-3
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    build_store(tmp_path / "close.h5", tiny_encoder.meta, rows)
    store = EmbeddingStore.open(tmp_path / "close.h5")
    matrix = store.image_embeddings()
    store.vector_blocks = lambda: [VectorBlock(matrix[i:i + 300], np.arange(i, min(i + 300, 2000)))  # type: ignore[method-assign]
                                   for i in range(0, 2000, 300)]
    with Searcher(store) as close:
        expected, scores = reference_ranking(matrix, close.query_vector(base)[0])
        results = close.search(base, k=40, offset=11)
        assert [hit.index for hit in results] == expected[11:51].tolist()
        np.testing.assert_allclose([h.score for h in results], scores[11:51], atol=1e-12)
    store.close()


@pytest.mark.parametrize("compiled", [True, False])  # top-n by native.top, or by torch.topk (not built)
@pytest.mark.parametrize("top_slice", [1 << 20, 64])  # 64: parts cut into slices, topped on threads
def test_fast_scores_merge_blocks_like_one_array(top_slice, compiled, monkeypatch):
    """Per-block top-n merged, counts and bands equal those of the scores in store-row order."""
    import torch

    from clipwidgets.searching import fast, native
    from clipwidgets.searching.fast import FastScores, Part

    monkeypatch.setattr(fast, "_TOP_SLICE", top_slice)
    if not compiled:
        monkeypatch.setattr(native, "top_built", lambda: False)

    rng = np.random.default_rng(9)
    dense = rng.standard_normal(1000).astype(np.float32)
    tail = 600 + rng.permutation(400)  # rows 600..999 out of order, between deleted entries
    with_dead = np.concatenate([[-1], tail, [-1, -1]])
    dead_scores = np.concatenate([[9.0], dense[tail], [9.0, 9.0]]).astype(np.float32)
    parts = [Part(torch.from_numpy(dense[:300].copy()), 0),
             Part(torch.from_numpy(dense[300:600].copy()), 300),
             Part(torch.from_numpy(dead_scores), with_dead)]
    scores = FastScores(parts, eps=0.0)
    mask = rng.random(1000) < 0.5
    for allowed in (None, mask):
        merged = scores.masked(allowed)
        reference = dense if allowed is None else np.where(allowed, dense, -np.inf)
        order = np.argsort(-reference, kind="stable")
        for count in (1, 10, 77):
            values, rows = merged.top(count)
            assert set(rows.tolist()) == set(order[:count].tolist())
            np.testing.assert_array_equal(values, reference[order[:count]])
        assert merged.count_at_least(0.5) == int((reference >= 0.5).sum())
        band = merged.rows_between(0.1, 0.3)
        assert sorted(band.tolist()) == np.flatnonzero((reference >= 0.1) & (reference < 0.3)).tolist()
        np.testing.assert_array_equal(merged.in_row_order(1000).numpy(), reference)
    whole = FastScores.dense(torch.from_numpy(dense), eps=0.0)  # one part, cut when top_slice is 64
    values, rows = whole.top(77)
    np.testing.assert_array_equal(rows, np.argsort(-dense, kind="stable")[:77])
    np.testing.assert_array_equal(values, np.sort(dense)[::-1][:77])
