"""Searcher on real HDF5 stores: algebra, filters, paging, thresholds, dedup, captions, exactness, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from clipwidgets.errors import ImageDecodeError, InvalidInputError, ModelMismatchError, StoreError
from clipwidgets.query import QueryPart
from clipwidgets.searcher import ADAPTIVE_MIN_GAP, Hit, Searcher, SearchResults, adaptive_cutoff, search
from clipwidgets.store import EmbeddingStore
from clipwidgets.synthetic import make_photos

DIM = 64  # the tiny model's embedding size


def unit_rows(rng: np.random.Generator, count: int, dim: int = DIM) -> np.ndarray:
    rows = rng.standard_normal((count, dim))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def build_store(path, meta, vectors, *, paths=None, texts=None, text_vectors=None, links=None,
                subsets=None, root=None):
    """A real store at `path` holding `vectors` (rows named r/000000.jpg ... unless `paths`)."""
    count = len(vectors)
    paths = paths or [f"r/{i:06d}.jpg" for i in range(count)]
    store = EmbeddingStore.create(path, meta, root or path.parent)
    if count:
        store.add_images(paths, vectors, sizes=[1] * count, mtimes_ns=[1] * count, widths=[8] * count,
                         heights=[8] * count)
    if texts:
        store.add_texts(texts, text_vectors, image_index=links, sources=["test"] * len(texts))
    for name, members in (subsets or {}).items():
        store.set_subset(name, members)
    store.close()
    return path


def reference_ranking(matrix: np.ndarray, query: np.ndarray, allowed: np.ndarray | None = None):
    """Rows and scores by a float64 ranking of the stored float16 values (ties: lower row first)."""
    scores = matrix.astype(np.float64) @ query.astype(np.float64)
    rows = np.arange(len(matrix))
    if allowed is not None:
        rows, scores = rows[allowed], scores[allowed]
    order = np.lexsort((rows, -scores))
    return rows[order], scores[order]


class CountingEncoder:
    """The real tiny encoder, counting calls to the text tower."""

    def __init__(self, encoder):
        self.encoder, self.meta, self.text_calls = encoder, encoder.meta, 0

    def encode_texts(self, texts):
        self.text_calls += 1
        return self.encoder.encode_texts(texts)

    def encode_images(self, images):
        return self.encoder.encode_images(images)


@pytest.fixture(scope="module")
def photo_store(tmp_path_factory, tiny_encoder):
    """12 generated photos in a/ and b/, captions for images 0..9, one free text, subset "test"."""
    folder = tmp_path_factory.mktemp("photos")
    root = folder / "images"
    files = make_photos(root / "a", 6, prefix="photo") + make_photos(root / "b", 6, seed=1, prefix="photo")
    relpaths = [file.relative_to(root).as_posix() for file in files]
    vectors = tiny_encoder.encode_images([Image.open(file) for file in files])
    texts = [f"{word} number {i}" for i in range(10) for word in ("red", "green")] + ["a free text"]
    links = [i for i in range(10) for _ in range(2)] + [-1]
    build_store(folder / "photos.h5", tiny_encoder.meta, vectors, paths=relpaths, texts=texts,
                text_vectors=tiny_encoder.encode_texts(texts), links=links,
                subsets={"test": relpaths[:4]}, root=root)
    return folder / "photos.h5"


@pytest.fixture(scope="module")
def random_store(tmp_path_factory, tiny_encoder):
    """3000 random unit vectors, the second half with one caption vector each."""
    rng = np.random.default_rng(7)
    folder = tmp_path_factory.mktemp("random")
    vectors = unit_rows(rng, 3000)
    captions = unit_rows(rng, 1500)
    build_store(folder / "random.h5", tiny_encoder.meta, vectors, texts=[f"t{i}" for i in range(1500)],
                text_vectors=captions, links=list(range(1500, 3000)),
                subsets={"even": [f"r/{i:06d}.jpg" for i in range(0, 3000, 2)]})
    return folder / "random.h5"


@pytest.fixture
def searcher(photo_store, tiny_encoder):
    with Searcher(photo_store, tiny_encoder) as opened:
        yield opened


@pytest.fixture(scope="module")
def vectors_searcher(random_store):
    with Searcher(random_store) as opened:
        yield opened


# ----- results -----

def test_text_search_returns_ranked_hits_with_paths_scores_and_captions(searcher):
    results = searcher.search("a red photo", k=5)
    assert isinstance(results, SearchResults) and len(results) == 5 and results.total == 12
    assert [hit.rank for hit in results] == [1, 2, 3, 4, 5]
    scores = [hit.score for hit in results]
    assert scores == sorted(scores, reverse=True) and all(isinstance(s, float) for s in scores)
    for hit in results:
        assert hit.path == searcher.store.image_paths()[hit.index]
        expected = tuple(searcher.store.captions(hit.index))
        assert hit.captions == expected
    assert results.query == "a red photo" and results.k == 5 and results.offset == 0
    assert results.elapsed_ms > 0


def test_text_output_and_records_are_plain_and_deterministic(searcher):
    results = searcher.search("a red photo", k=3)
    lines = str(results).splitlines()
    assert lines == [f"{h.rank}. {h.path}  {h.score:.4f}" for h in results]
    assert repr(results).startswith("<SearchResults for 'a red photo': 3 of 12>")
    records = json.loads(json.dumps(results.to_records()))
    assert [r["path"] for r in records] == [h.path for h in results]
    for record, hit in zip(records, results, strict=True):
        assert record == {"rank": hit.rank, "index": hit.index, "path": hit.path, "score": hit.score,
                          **({"captions": list(hit.captions)} if hit.captions else {})}
    assert str(searcher.search("a red photo", k=1, subset=[], exclude=None)) == "no results for 'a red photo'"


# ----- exactness -----

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ranking_equals_a_float64_reference(vectors_searcher, seed):
    matrix = vectors_searcher.store.image_embeddings()
    query = unit_rows(np.random.default_rng(seed), 1)[0]
    results = vectors_searcher.search(query, k=200)
    rows, scores = reference_ranking(matrix, query)
    assert [hit.index for hit in results] == rows[:200].tolist()
    np.testing.assert_allclose([hit.score for hit in results], scores[:200], rtol=0, atol=1e-12)


def test_ranking_is_exact_where_16_bit_scores_tie(tmp_path, tiny_encoder):
    """Rows closer together than float16 resolution: the fast pass ties, the float64 re-scoring decides."""
    rng = np.random.default_rng(3)
    base = unit_rows(rng, 1)[0]
    rows = base + rng.standard_normal((2000, DIM)).astype(np.float32) * 2e-3
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    build_store(tmp_path / "close.h5", tiny_encoder.meta, rows)
    with Searcher(tmp_path / "close.h5") as close:
        matrix = close.store.image_embeddings()
        query = close.query_vector(base)[0]
        fast = (matrix @ query.astype(np.float16))[:50]
        assert len(np.unique(fast)) < 50  # the float16 kernel cannot tell these apart
        for offset in (0, 37):
            results = close.search(base, k=40, offset=offset)
            expected, scores = reference_ranking(matrix, query)
            assert [hit.index for hit in results] == expected[offset:offset + 40].tolist()
            np.testing.assert_allclose([h.score for h in results], scores[offset:offset + 40], atol=1e-12)


def test_float32_store_ranks_exactly_too(tmp_path, tiny_encoder):
    rng = np.random.default_rng(12)
    base = unit_rows(rng, 1)[0]
    rows = base + rng.standard_normal((1500, DIM)).astype(np.float32) * 1e-3  # finer than float16
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    with EmbeddingStore.create(tmp_path / "f32.h5", tiny_encoder.meta, tmp_path, dtype="float32") as store:
        store.add_images([f"{i}.jpg" for i in range(1500)], rows, sizes=[1] * 1500, mtimes_ns=[1] * 1500,
                         widths=[1] * 1500, heights=[1] * 1500)
    with Searcher(tmp_path / "f32.h5") as searcher:
        matrix = searcher.store.image_embeddings()
        assert matrix.dtype == np.float32
        query = searcher.query_vector(base)[0]
        expected, scores = reference_ranking(matrix, query)
        for results in (searcher.search(base, k=100), searcher.search_many([base], k=100)[0]):
            assert [hit.index for hit in results] == expected[:100].tolist()
            np.testing.assert_allclose([h.score for h in results], scores[:100], atol=1e-12)


def test_filtered_and_caption_rankings_equal_float64_references(vectors_searcher):
    store = vectors_searcher.store
    query = unit_rows(np.random.default_rng(11), 1)[0]
    allowed = np.zeros(3000, dtype=bool)
    allowed[::2] = True
    results = vectors_searcher.search(query, k=30, subset="even")
    expected = reference_ranking(store.image_embeddings(), query, allowed)[0]
    assert [h.index for h in results] == expected[:30].tolist()

    captions = store.text_embeddings().astype(np.float64) @ query.astype(np.float64)
    best = np.full(3000, -np.inf)
    best[1500:] = captions
    images = store.image_embeddings().astype(np.float64) @ query.astype(np.float64)
    both = np.where(np.isfinite(best), (images + best) / 2, images)
    for target, expected_scores in (("captions", best), ("both", both)):
        results = vectors_searcher.search(query, k=25, target=target)
        order = np.lexsort((np.arange(3000), -expected_scores))[:25]
        assert [h.index for h in results] == order.tolist(), target
        np.testing.assert_allclose([h.score for h in results], expected_scores[order], atol=1e-12)
    assert vectors_searcher.search(query, k=5, target="captions").total == 1500


def test_batched_queries_give_the_same_results(vectors_searcher):
    queries = list(unit_rows(np.random.default_rng(5), 6))
    batched = vectors_searcher.search_many(queries, k=15, offset=3, subset="even")
    single = [vectors_searcher.search(q, k=15, offset=3, subset="even") for q in queries]
    assert [r.hits for r in batched] == [r.hits for r in single]


# ----- query algebra -----

def test_algebra_combines_weighted_text_embeddings(searcher, tiny_encoder):
    vector, description = searcher.query_vector("2:beach + sunset - people")
    beach, sunset, people = tiny_encoder.encode_texts(["beach", "sunset", "people"]).astype(np.float64)
    expected = 2 * beach + sunset - people
    np.testing.assert_allclose(vector, expected / np.linalg.norm(expected), atol=1e-6)
    assert description == "2:beach + sunset - people"
    same, _ = searcher.query_vector("2:beach + sunset", negative="people")
    np.testing.assert_allclose(same, vector, atol=1e-6)
    parts, _ = searcher.query_vector([QueryPart(2, "beach"), (1, "sunset"), (-1.0, "people")])
    np.testing.assert_allclose(parts, vector, atol=1e-6)


def test_negative_part_changes_the_ranking(searcher):
    plain = searcher.search("a red photo", k=12)
    top = plain[0]
    image_vector = searcher.store.image_embeddings()[top.index].astype(np.float32)
    pushed = searcher.search([(1, "a red photo"), (-3, image_vector)], k=12)
    assert pushed[0].index != top.index
    assert [h.index for h in pushed][-1] == top.index


def test_mixed_image_and_text_parts(searcher, photo_store):
    path = photo_store.parent / "images" / "a" / "photo_00002.jpg"
    results = searcher.search([(3, path), (1, "a red photo")], k=3)
    assert results[0].path == "a/photo_00002.jpg"
    assert results.query == "3:image:photo_00002.jpg + a red photo"


def test_repeated_text_queries_hit_the_cache(photo_store, tiny_encoder):
    counting = CountingEncoder(tiny_encoder)
    with Searcher(photo_store, counting, cache_size=2) as cached:
        first = cached.search("a red photo", k=3)
        assert counting.text_calls == 1
        assert cached.search("a red photo", k=3).hits == first.hits
        assert counting.text_calls == 1
        cached.search("sunset - a red photo", k=3)  # only "sunset" is new
        assert counting.text_calls == 2
        cached.search("a blue car", k=3)  # evicts "a red photo" (cache of 2)
        cached.search("a red photo", k=3)
        assert counting.text_calls == 4


# ----- image and more-like-this queries -----

def test_image_queries_in_every_form_agree(searcher, photo_store):
    path = photo_store.parent / "images" / "b" / "photo_00003.jpg"
    image = Image.open(path)
    by_path = searcher.search(path, k=3)
    assert by_path[0].path == "b/photo_00003.jpg"
    assert searcher.search(image, k=3).hits == by_path.hits
    assert searcher.search(np.asarray(image), k=3).hits == by_path.hits
    assert searcher.search(np.asarray(image) / 255.0, k=3)[0].path == "b/photo_00003.jpg"


def test_more_like_this_ranks_the_image_itself_first(searcher, photo_store):
    by_row = searcher.more_like(7, k=4)
    assert by_row[0].index == 7 and by_row[0].score == pytest.approx(1.0, abs=2e-3)
    assert searcher.more_like("b/photo_00001.jpg", k=4).hits == by_row.hits
    absolute = photo_store.parent / "images" / "b" / "photo_00001.jpg"
    assert searcher.more_like(absolute, k=4).hits == by_row.hits
    without = searcher.more_like(7, k=3, exclude=[7])
    assert [h.index for h in without] == [h.index for h in by_row][1:]
    assert by_row.query == "like:b/photo_00001.jpg"


def test_more_like_this_needs_no_encoder(photo_store):
    with Searcher(photo_store) as bare:
        assert bare.more_like(0, k=2)[0].index == 0
        with pytest.raises(InvalidInputError, match="pass encoder=load_model"):
            bare.search("a dog")


# ----- filters, paging, thresholds, dedup -----

def test_path_glob_prefix_subset_and_exclude(searcher):
    assert {h.path[:2] for h in searcher.search("a photo", k=12, path_glob="b/")} == {"b/"}
    globbed = searcher.search("a photo", k=12, path_glob="*/photo_0000[12].jpg")
    assert sorted(h.path for h in globbed) == ["a/photo_00001.jpg", "a/photo_00002.jpg",
                                               "b/photo_00001.jpg", "b/photo_00002.jpg"]
    assert globbed.total == 4
    subset = searcher.search("a photo", k=12, subset="test")
    assert sorted(h.index for h in subset) == [0, 1, 2, 3] and subset.total == 4
    listed = searcher.search("a photo", k=12, subset=[5, "b/photo_00000.jpg"])
    assert sorted(h.index for h in listed) == [5, 6]
    mask = np.zeros(12, dtype=bool)
    mask[[2, 9]] = True
    assert sorted(h.index for h in searcher.search("a photo", k=12, subset=mask)) == [2, 9]
    excluded = searcher.search("a photo", k=12, subset="test", exclude=[0, "a/photo_00001.jpg"])
    assert sorted(h.index for h in excluded) == [2, 3] and excluded.total == 2
    assert len(searcher.search("a photo", k=5, path_glob="c/")) == 0


def test_paging_walks_the_same_ranking(vectors_searcher):
    query = unit_rows(np.random.default_rng(9), 1)[0]
    full = vectors_searcher.search(query, k=60)
    pages = [vectors_searcher.search(query, k=25, offset=offset) for offset in (0, 25, 50)]
    assert [h.index for page in pages for h in page][:60] == [h.index for h in full]
    assert [h.rank for h in pages[1]] == list(range(26, 51))
    beyond = vectors_searcher.search(query, k=10, offset=2995)
    assert [h.rank for h in beyond] == [2996, 2997, 2998, 2999, 3000] and beyond.total == 3000


def test_min_score_keeps_only_hits_above_and_counts_them_exactly(vectors_searcher):
    query = unit_rows(np.random.default_rng(4), 1)[0]
    _, scores = reference_ranking(vectors_searcher.store.image_embeddings(), query)
    threshold = float(scores[57] + scores[58]) / 2
    results = vectors_searcher.search(query, k=100, min_score=threshold)
    assert len(results) == 58 and results.total == 58
    assert min(h.score for h in results) >= threshold
    assert vectors_searcher.search(query, k=100, min_score=0.99).total == 0


def test_adaptive_cutoff_rule_on_crafted_scores():
    cluster = [0.31, 0.305, 0.30, 0.298, 0.296]
    tail = list(np.linspace(0.22, 0.20, 95))
    assert adaptive_cutoff(cluster + tail) == 5
    assert adaptive_cutoff(list(np.linspace(0.30, 0.20, 100))) is None  # no gap: a smooth curve
    assert adaptive_cutoff([0.3, 0.2]) is None  # too few scores to judge
    small = [0.31, 0.305, 0.30, 0.298, 0.296 - 0.0] + list(np.linspace(0.296 - ADAPTIVE_MIN_GAP / 2, 0.2, 95))
    assert adaptive_cutoff(small) is None  # a relative gap below the absolute floor


def test_adaptive_search_stops_at_the_gap(tmp_path, tiny_encoder):
    rng = np.random.default_rng(1)
    query = unit_rows(rng, 1)[0]
    noise = unit_rows(rng, 500)
    near = query + 0.25 * unit_rows(rng, 6)  # six clearly better matches
    vectors = np.concatenate([noise[:200], near / np.linalg.norm(near, axis=1, keepdims=True), noise[200:]])
    build_store(tmp_path / "gap.h5", tiny_encoder.meta, vectors)
    with Searcher(tmp_path / "gap.h5") as gap:
        results = gap.search(query, k=20, adaptive=True)
        assert sorted(h.index for h in results) == list(range(200, 206)) and results.total == 6
        assert len(gap.search(query, k=20)) == 20
        assert len(gap.search(query, k=3, offset=3, adaptive=True)) == 3


def test_dedup_collapses_near_duplicates_and_refills_the_page(tmp_path, tiny_encoder):
    rng = np.random.default_rng(2)
    query = unit_rows(rng, 1)[0]
    originals = query + 0.6 * unit_rows(rng, 5)
    originals /= np.linalg.norm(originals, axis=1, keepdims=True)
    copies = originals + 0.01 * unit_rows(rng, 5)
    copies /= np.linalg.norm(copies, axis=1, keepdims=True)
    vectors = np.concatenate([originals, copies, unit_rows(rng, 100)])
    build_store(tmp_path / "dups.h5", tiny_encoder.meta, vectors)
    with Searcher(tmp_path / "dups.h5") as dups:
        plain = dups.search(query, k=10)
        assert {h.index for h in plain} == set(range(10))
        collapsed = dups.search(query, k=10, dedup=True)
        kept = [h.index for h in collapsed]
        assert len(kept) == 10 and len({i % 5 for i in kept if i < 10}) == sum(1 for i in kept if i < 10) == 5
        assert [h.rank for h in collapsed] == list(range(1, 11))
        matrix = dups.store.image_embeddings().astype(np.float32)[kept]
        similarity = matrix @ matrix.T - np.eye(10) * 2
        assert similarity.max() < 0.95
        assert len(dups.search(query, k=10, dedup=0.999999)) == 10


# ----- captions -----

def test_caption_target_ranks_images_by_their_best_caption(searcher, tiny_encoder):
    results = searcher.search("green number 4", k=3, target="captions")
    assert results[0].index == 4 and results[0].score == pytest.approx(1.0, abs=2e-3)
    assert results.total == 10  # images 10 and 11 have no captions
    assert all(h.captions for h in searcher.search("photo", k=12, target="captions"))
    both = searcher.search("green number 4", k=12, target="both")
    assert both.total == 12
    image_score = searcher.search("green number 4", k=12)
    by_index = {h.index: h.score for h in image_score}
    caption_score = {h.index: h.score for h in searcher.search("green number 4", k=12, target="captions")}
    for hit in both:
        image = by_index[hit.index]
        expected = (image + caption_score[hit.index]) / 2 if hit.index < 10 else image
        assert hit.score == pytest.approx(expected, abs=1e-9)


def test_caption_target_without_captions_is_refused(tmp_path, tiny_encoder):
    build_store(tmp_path / "bare.h5", tiny_encoder.meta, unit_rows(np.random.default_rng(0), 5))
    with Searcher(tmp_path / "bare.h5") as bare, pytest.raises(InvalidInputError, match="has none"):
        bare.search(unit_rows(np.random.default_rng(1), 1)[0], target="captions")


# ----- store changes and the one-line search -----

def test_refresh_sees_images_added_by_a_writer(tmp_path, tiny_encoder):
    rng = np.random.default_rng(6)
    path = build_store(tmp_path / "grow.h5", tiny_encoder.meta, unit_rows(rng, 10))
    with Searcher(path) as growing:
        assert not growing.refresh()
        extra = unit_rows(rng, 1)
        with EmbeddingStore.open(path, "a") as writer:
            writer.add_images(["r/new.jpg"], extra, sizes=[1], mtimes_ns=[1], widths=[8], heights=[8])
        assert growing.refresh() and growing.num_images == 11
        assert growing.search(extra[0], k=1)[0].path == "r/new.jpg"


def test_a_store_passed_in_stays_open(photo_store, tiny_encoder):
    store = EmbeddingStore.open(photo_store)
    with Searcher(store, tiny_encoder) as borrowed:
        assert borrowed.store is store and len(borrowed.search("a photo", k=2)) == 2
    assert not store.closed
    store.close()
    with Searcher(photo_store) as owned:
        pass
    assert owned.store.closed


def test_one_line_search_loads_the_store_model(photo_store):
    results = search(photo_store, "a red photo", k=4)
    assert isinstance(results[0], Hit) and len(results) == 4
    with EmbeddingStore.open(photo_store) as store:
        vector = store.image_embeddings()[results[0].index].astype(np.float32)
    assert search(photo_store, vector, k=1)[0].index == results[0].index  # a vector needs no model


# ----- bad input -----

@pytest.mark.parametrize(("query", "message"), [
    ("", "empty"),
    ("   ", "empty"),
    ("- people", "at least one positive part"),
    ("x:beach", "must be a positive number"),
    ([], "empty list"),
    ([(-1, "people")], "at least one positive part"),
    ([("2", "beach")], "QueryPart"),
    ([(0, "beach")], "non-zero"),
    ("dog - dog", "cancel out"),
    (np.zeros(DIM, dtype=np.float32), "zero"),
    (np.ones(DIM + 1, dtype=np.float32), f"has {DIM + 1} values but the store's embeddings have {DIM}"),
    (np.zeros((4, 4, 5), dtype=np.uint8), r"shape \(H, W, 3\)"),
    (42, "Cannot search for a int"),
])
def test_bad_queries_get_clear_messages(searcher, query, message):
    with pytest.raises(InvalidInputError, match=message):
        searcher.search(query)


@pytest.mark.parametrize(("options", "message"), [
    ({"k": 0}, "positive integer"),
    ({"k": -3}, "positive integer"),
    ({"k": 2.5}, "positive integer"),
    ({"offset": -1}, ">= 0"),
    ({"min_score": 1.5}, "between -1 and 1"),
    ({"target": "texts"}, "use one of images, captions, both"),
    ({"dedup": 1.5}, r"in \(0, 1\]"),
    ({"subset": "validation"}, r"not a subset .* \(known: test\)"),
    ({"exclude": [99]}, "out of range"),
    ({"exclude": ["nowhere.jpg"]}, "is not in store"),
    ({"path_glob": ""}, "give a glob"),
])
def test_bad_options_get_clear_messages(searcher, options, message):
    with pytest.raises(InvalidInputError, match=message):
        searcher.search("a photo", **options)


def test_undecodable_image_names_the_file(searcher, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ImageDecodeError, match="broken.jpg"):
        searcher.search(broken)
    with pytest.raises(ImageDecodeError, match="missing.png: file not found"):
        searcher.search(tmp_path / "missing.png")


def test_store_of_another_model_is_refused(tmp_path, tiny_encoder):
    other = dict(tiny_encoder.meta, name="ViT-B-32-quickgelu", pretrained="openai")
    build_store(tmp_path / "other.h5", other, unit_rows(np.random.default_rng(0), 3))
    with pytest.raises(ModelMismatchError, match="ViT-B-32-quickgelu/openai"):
        Searcher(tmp_path / "other.h5", tiny_encoder)


def test_empty_store_says_how_to_fill_it(tmp_path, tiny_encoder):
    build_store(tmp_path / "empty.h5", tiny_encoder.meta, np.zeros((0, DIM), dtype=np.float32))
    empty = Searcher(tmp_path / "empty.h5", tiny_encoder)
    with pytest.raises(StoreError, match="has no images yet: run `clipwidgets index"):
        empty.search("a dog")
    empty.close()


def test_missing_store_and_unknown_ann_mode(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        Searcher(tmp_path / "nowhere.h5")
    with pytest.raises(InvalidInputError, match="Unknown ann mode"):
        Searcher(tmp_path / "nowhere.h5", ann="sometimes")
