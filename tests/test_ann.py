"""The optional approximate index: build, freshness, automatic use above a threshold, filters."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from clipwidgets.ann import build_ann_index, index_paths, load_ann_index
from clipwidgets.errors import InvalidInputError
from clipwidgets.searcher import Searcher
from clipwidgets.store import EmbeddingStore

pytest.importorskip("faiss")

DIM = 64


def clustered(rng: np.random.Generator, count: int) -> np.ndarray:
    """Unit vectors around 50 centres, like embeddings of a photo collection."""
    centres = rng.standard_normal((50, DIM))
    rows = centres[rng.integers(0, 50, count)] + 0.5 * rng.standard_normal((count, DIM))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def ann_store(tmp_path_factory, tiny_encoder):
    path = tmp_path_factory.mktemp("ann") / "ann.h5"
    vectors = clustered(np.random.default_rng(0), 4000)
    with EmbeddingStore.create(path, tiny_encoder.meta, path.parent) as store:
        store.add_images([f"r/{i:05d}.jpg" for i in range(4000)], vectors, sizes=[1] * 4000,
                         mtimes_ns=[1] * 4000, widths=[8] * 4000, heights=[8] * 4000)
        build_ann_index(store)
    return path


@pytest.mark.parametrize("kind", ["hnsw", "ivf", "ivfpq"])
def test_approximate_index_finds_the_exact_top_10(ann_store, tmp_path, kind):
    path = ann_store
    if kind != "hnsw":
        path = Path(shutil.copy(ann_store, tmp_path / "ivf.h5"))
        shutil.copytree(ann_store.with_name("ann.h5.d"), tmp_path / "ivf.h5.d")  # a store's segments
        with EmbeddingStore.open(path) as store:
            build_ann_index(store, kind=kind)
    queries = clustered(np.random.default_rng(1), 20)
    with Searcher(path, ann="always") as approximate, Searcher(path, ann="never") as exact:
        assert approximate.backend == "ann" and exact.backend == "exact"
        found = 0
        for query in queries:
            fast = approximate.search(query, k=10)
            truth = exact.search(query, k=10)
            assert fast.backend == "ann"
            found += len({h.index for h in fast} & {h.index for h in truth})
            for hit in fast:  # scores are exact even when the candidates came from the index
                expected = exact.exact_scores(query, np.array([hit.index]))[0]
                assert hit.score == pytest.approx(expected, abs=1e-12)
        assert found / (10 * len(queries)) >= 0.95


def test_index_is_used_automatically_only_above_the_threshold(ann_store):
    with Searcher(ann_store) as default:
        assert default.backend == "exact" and "ann_threshold" in default.ann_note
    with Searcher(ann_store, ann_threshold=1000) as auto:
        assert auto.backend == "ann"


def test_filters_with_the_index_fall_back_to_exact_when_too_few_survive(ann_store):
    query = clustered(np.random.default_rng(2), 1)[0]
    with Searcher(ann_store, ann="always") as approximate, Searcher(ann_store, ann="never") as exact:
        few = ["r/00007.jpg", "r/03999.jpg", "r/01234.jpg"]
        assert approximate.search(query, k=3, subset=few).hits == exact.search(query, k=3, subset=few).hits
        prefix = approximate.search(query, k=5, path_glob="r/01")
        assert all(h.path.startswith("r/01") for h in prefix) and len(prefix) == 5


def test_a_stale_index_is_ignored(tmp_path, tiny_encoder):
    path = tmp_path / "stale.h5"
    rng = np.random.default_rng(3)
    with EmbeddingStore.create(path, tiny_encoder.meta, tmp_path) as store:
        store.add_images([f"r/{i}.jpg" for i in range(100)], clustered(rng, 100), sizes=[1] * 100,
                         mtimes_ns=[1] * 100, widths=[8] * 100, heights=[8] * 100)
        written = build_ann_index(store)
    assert written == index_paths(EmbeddingStore.open(path))[0] and written.name == "stale.h5.faiss"
    with EmbeddingStore.open(path, "a") as store:
        store.add_images(["r/new.jpg"], clustered(rng, 1), sizes=[1], mtimes_ns=[1], widths=[8], heights=[8])
    with EmbeddingStore.open(path) as store:
        assert load_ann_index(store) is None
    with Searcher(path, ann_threshold=10) as searcher:
        assert searcher.backend == "exact" and "predates" in searcher.ann_note
    with pytest.raises(InvalidInputError, match="ann='always' but .*predates"):
        Searcher(path, ann="always")


def test_building_streams_the_segments_and_skips_deleted_rows(tmp_path, tiny_encoder, monkeypatch):
    """ivfpq over several segments with tombstones, read a few rows at a time: never the whole matrix
    or every path; the index's rows are the store's rows."""
    import clipwidgets.ann as ann

    path = tmp_path / "segments.h5"
    vectors = clustered(np.random.default_rng(4), 3000)
    with EmbeddingStore.create(path, tiny_encoder.meta, tmp_path) as store:
        for start in range(0, 3000, 500):  # six commits: several segments
            names = [f"r/{i:05d}.jpg" for i in range(start, start + 500)]
            store.add_images(names, vectors[start:start + 500], sizes=[1] * 500, mtimes_ns=[1] * 500,
                             widths=[8] * 500, heights=[8] * 500)
        store.remove([f"r/{i:05d}.jpg" for i in range(0, 3000, 7)])
        assert store.info()["segments"] > 1 and store.info()["tombstones"] > 0

        def whole(*_: object) -> None:
            raise AssertionError("the build read every row or path at once")
        monkeypatch.setattr(store, "image_embeddings", whole)
        monkeypatch.setattr(store, "image_paths", whole)
        monkeypatch.setattr(ann, "BUILD_ROWS", 128)
        build_ann_index(store, kind="ivfpq")
        assert json.loads(index_paths(store)[1].read_text())["kind"] == "ivfpq"
    live = np.delete(vectors, np.arange(0, 3000, 7), axis=0)
    queries = clustered(np.random.default_rng(5), 20)
    with Searcher(path, ann="always") as approximate:
        found = 0
        for query in queries:
            truth = set(np.argsort(-(live @ query), kind="stable")[:10].tolist())
            found += len({h.index for h in approximate.search(query, k=10)} & truth)
        assert found / 200 >= 0.95


def test_auto_kind_picks_ivfpq_for_large_stores(ann_store, tmp_path, monkeypatch):
    import clipwidgets.ann as ann

    path = Path(shutil.copy(ann_store, tmp_path / "auto.h5"))
    shutil.copytree(ann_store.with_name("ann.h5.d"), tmp_path / "auto.h5.d")
    monkeypatch.setattr(ann, "AUTO_IVFPQ_ROWS", 1000)
    with EmbeddingStore.open(path) as store:
        build_ann_index(store)
        assert json.loads(index_paths(store)[1].read_text())["kind"] == "ivfpq"
        assert load_ann_index(store).kind == "ivfpq"


@pytest.mark.parametrize(("dim", "codes"), [(64, "IndexIVFPQFastScan"), (6, "IndexIVFPQ")])
def test_ivfpq_codes_by_dimension(tmp_path, dim, codes):
    """4-bit fast-scan codes where the dimension splits into an even number of 4-d parts, 8-bit
    product codes otherwise; both find the exact top-10 after the exact re-scoring."""
    import faiss

    rng = np.random.default_rng(7)
    centres = rng.standard_normal((20, dim))
    rows = centres[rng.integers(0, 20, 3000)] + 0.3 * rng.standard_normal((3000, dim))
    vectors = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
    path = tmp_path / f"d{dim}.h5"
    with EmbeddingStore.create(path, {"name": "t", "pretrained": "x", "embed_dim": dim}, tmp_path) as store:
        store.add_images([f"r/{i}.jpg" for i in range(3000)], vectors, sizes=[1] * 3000, mtimes_ns=[1] * 3000,
                         widths=[8] * 3000, heights=[8] * 3000)
        build_ann_index(store, kind="ivfpq")
        assert type(faiss.downcast_index(load_ann_index(store).index)).__name__ == codes
    stored = vectors.astype(np.float16).astype(np.float64)
    with Searcher(path, ann="always") as approximate:
        for query in vectors[:5]:
            truth = np.lexsort((np.arange(3000), -(stored @ query.astype(np.float64))))[:10]
            assert [hit.index for hit in approximate.search(query, k=10)] == truth.tolist()


def test_bad_index_kind(ann_store):
    store = EmbeddingStore.open(ann_store)
    with pytest.raises(InvalidInputError, match="Unknown index kind"):
        build_ann_index(store, kind="lsh")
    store.close()
