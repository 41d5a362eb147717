"""SearchOptions: validated once, shared as an object, the same as keywords; search_vector."""

from __future__ import annotations

import numpy as np
import pytest

from clipwidgets.errors import InvalidInputError
from clipwidgets.searcher import Searcher, SearchOptions
from clipwidgets.store import EmbeddingStore

DIM = 64


@pytest.fixture(scope="module")
def small(tmp_path_factory, tiny_encoder):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((400, DIM))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    path = tmp_path_factory.mktemp("options") / "options.h5"
    with EmbeddingStore.create(path, tiny_encoder.meta, path.parent) as store:
        store.add_images([f"{'ab'[i % 2]}/{i:04d}.jpg" for i in range(400)], vectors, sizes=[1] * 400,
                         mtimes_ns=[1] * 400, widths=[8] * 400, heights=[8] * 400)
    with Searcher(path, tiny_encoder) as searcher:
        yield searcher


@pytest.mark.parametrize(("options", "message"), [
    ({"k": 0}, "positive integer"), ({"k": True}, "positive integer"), ({"offset": -1}, ">= 0"),
    ({"min_score": -2}, "between -1 and 1"), ({"target": "text"}, "use one of images, captions, both"),
    ({"dedup": 0}, r"in \(0, 1\]"), ({"dedup": "yes"}, r"in \(0, 1\]"), ({"path_glob": ""}, "give a glob"),
    ({"negative": 3}, "give text"),
])
def test_bad_options_are_refused_when_made(options, message):
    with pytest.raises(InvalidInputError, match=message):
        SearchOptions(**options)


def test_defaults_and_changes():
    options = SearchOptions()
    assert (options.k, options.offset, options.target, options.dedup_threshold) == (10, 0, "images", None)
    assert SearchOptions(dedup=True).dedup_threshold == 0.95
    assert options.with_changes(k=None, offset=None) is options
    paged = options.with_changes(offset=20, k=5)
    assert (paged.k, paged.offset) == (5, 20) and options.offset == 0
    with pytest.raises(InvalidInputError, match="positive integer"):
        options.with_changes(k=-1)
    with pytest.raises(AttributeError):
        options.k = 3  # type: ignore[misc]


def test_an_options_object_equals_the_keywords(small):
    query = small.store.image_embeddings()[3].astype(np.float32)
    shared = SearchOptions(k=7, path_glob="a/", exclude=[0], min_score=-0.5)
    by_object = small.search(query, shared)
    by_keywords = small.search(query, k=7, path_glob="a/", exclude=[0], min_score=-0.5)
    assert by_object.hits == by_keywords.hits and by_object.total == by_keywords.total == 199
    assert all(hit.path.startswith("a/") for hit in by_object)
    second = small.search(query, shared, offset=7)
    assert [h.rank for h in second] == list(range(8, 15))
    assert small.more_like(3, shared).hits == small.more_like(3, k=7, path_glob="a/", exclude=[0],
                                                              min_score=-0.5).hits
    assert [r.hits for r in small.search_many([query], shared)] == [by_object.hits]
    with pytest.raises(InvalidInputError, match="give a SearchOptions"):
        small.search(query, {"k": 3})
    with pytest.raises(TypeError):
        small.more_like(3, top=4)  # type: ignore[call-arg]


def test_search_vector_takes_an_adjusted_vector(small):
    matrix = small.store.image_embeddings().astype(np.float64)
    vector = 0.7 * matrix[10] + 0.3 * matrix[11] - 0.2 * matrix[12]  # a query moved by feedback
    found = small.search_vector(vector, k=5, description="feedback")
    unit = vector / np.linalg.norm(vector)
    expected = np.lexsort((np.arange(400), -(matrix @ unit)))[:5]
    assert [h.index for h in found] == expected.tolist() and found.query == "feedback"
    assert small.search_vector(vector, SearchOptions(k=2), exclude=[int(expected[0])])[0].index == expected[1]
    with pytest.raises(InvalidInputError, match="zero"):
        small.search_vector(np.zeros(DIM))
