"""Relevance feedback: Rocchio in the Searcher, marks in the panel (kept per search, undoable)."""

from __future__ import annotations

import numpy as np
import pytest
from test_widgets import build_store

from clipwidgets.errors import InvalidInputError
from clipwidgets.feedback import FeedbackMarks, FeedbackWeights, rocchio
from clipwidgets.searcher import Searcher
from clipwidgets.widgets import SearchPanel


@pytest.fixture(scope="module")
def store(tmp_path_factory, store_factory):
    return build_store(store_factory, tmp_path_factory.mktemp("feedback"), count=30)


@pytest.fixture
def searcher(store, tiny_encoder):
    return Searcher(store, tiny_encoder)


def test_rocchio_is_the_normalised_weighted_sum():
    query = np.array([1.0, 0, 0])
    relevant = np.array([[0, 1.0, 0], [0, 0.6, 0.8]])
    irrelevant = np.array([[0, 0, 1.0]])
    weights = FeedbackWeights(alpha=1, beta=0.5, gamma=0.25)
    expected = query + 0.5 * relevant.mean(axis=0) - 0.25 * irrelevant[0]
    assert np.allclose(rocchio(query, relevant, irrelevant, weights), expected / np.linalg.norm(expected))
    assert np.allclose(rocchio(query, relevant[:0], irrelevant[:0]), query)


def test_search_with_marks_equals_a_search_for_the_rocchio_vector(searcher, store):
    weights = FeedbackWeights(alpha=1, beta=0.8, gamma=0.3)
    marked = searcher.search("a photo", k=30, positive=[4, store.image_paths()[9]], negative_images=[2],
                             feedback_weights=weights)
    vector, _ = searcher.query_vector("a photo")
    matrix = store.image_embeddings()
    by_hand = searcher.search(rocchio(vector, matrix[[4, 9]], matrix[[2]], weights), k=30)
    assert [hit.index for hit in marked] == [hit.index for hit in by_hand]
    assert [hit.score for hit in marked] == pytest.approx([hit.score for hit in by_hand], abs=1e-6)
    plain = searcher.search("a photo", k=30)
    rank = {hit.index: hit.rank for hit in plain}
    moved = {hit.index: hit.rank for hit in marked}
    assert moved[4] <= rank[4] and moved[9] <= rank[9] and moved[2] >= rank[2]
    assert "marked" in marked.query


def test_weights_decide_how_far_the_query_moves(searcher):
    strong = searcher.search("a photo", k=1, positive=[17],
                             feedback_weights=FeedbackWeights(alpha=0.01, beta=1))
    assert strong[0].index == 17  # the query is (almost) the marked image itself
    weak = searcher.search("a photo", k=30, positive=[17], feedback_weights=FeedbackWeights(beta=0))
    assert [h.index for h in weak] == [h.index for h in searcher.search("a photo", k=30)]


@pytest.mark.parametrize(("options", "message"), [
    ({"positive": [3], "negative_images": [3]}, "both relevant and irrelevant"),
    ({"positive": [999]}, "out of range"),
    ({"positive": ["nope.jpg"]}, "nope.jpg"),
    ({"feedback_weights": FeedbackWeights(alpha=0, beta=0)}, "cancels the query out"),
])
def test_bad_feedback_is_explained(searcher, options, message):
    with pytest.raises(InvalidInputError, match=message):
        searcher.search("a photo", positive=options.pop("positive", [1]), **options)


def test_negative_weights_are_refused():
    with pytest.raises(InvalidInputError, match="gamma=-1"):
        FeedbackWeights(gamma=-1)


def test_marks_undo_step_by_step():
    marks = FeedbackMarks()
    marks.mark([1, 2], 1)
    marks.update({3: -1, 1: 0})
    assert marks.positive == (2,) and marks.negative == (3,) and marks.value(1) == 0
    assert marks.undo() and marks.positive == (1, 2) and marks.negative == ()
    assert marks.undo() and len(marks) == 0 and not marks.undo()


@pytest.fixture
def panel(store, tiny_encoder):
    return SearchPanel(store, tiny_encoder, per_page=12, disk_cache=False)


def card_marks(panel, position):
    card = panel.grid.children[position]
    return card.children[3].children  # ("more" toggle, "fewer" toggle)


def test_marking_cards_then_refine_reranks_with_rocchio(panel, searcher):
    before = panel.search("a photo")
    good, bad = card_marks(panel, 5), card_marks(panel, 0)
    good[0].value = True  # the user presses "more" on the 6th card and "fewer" on the first
    bad[1].value = True
    assert panel.marks.positive == (before[5].index,) and panel.marks.negative == (before[0].index,)
    assert [hit.index for hit in panel.results] == [hit.index for hit in before]  # marks wait for Refine
    assert not panel.refine_button.disabled and "1 more, 1 fewer" in panel.marks_label.value
    panel.refine_button.click()
    expected = searcher.search("a photo", k=12, positive=[before[5].index], negative_images=[before[0].index])
    assert [hit.index for hit in panel.results] == [hit.index for hit in expected]
    assert panel.refine_button.disabled and panel.error is None
    shown = {hit.index: pos for pos, hit in enumerate(panel.results)}
    assert card_marks(panel, shown[before[5].index])[0].value  # the marks stay on their images


def test_feedback_from_code_and_undo(panel, searcher):
    plain = [hit.index for hit in panel.search("a photo")]
    panel.feedback(positive=[plain[7], plain[8]], negative=[plain[0]])
    marked = [hit.index for hit in panel.results]
    assert marked == [h.index for h in searcher.search("a photo", k=12, positive=[plain[7], plain[8]],
                                                        negative_images=[plain[0]])]
    assert marked != plain
    panel.undo_mark()  # the whole feedback() call was one step
    assert [hit.index for hit in panel.results] == plain and len(panel.marks) == 0
    assert panel.undo_button.disabled


def test_marks_are_kept_per_search(panel):
    panel.search("a photo")
    panel.mark(panel.results[3].index, 1)
    panel.search("a dog")
    assert len(panel.marks) == 0
    panel.mark(panel.results[1].index, -1)
    panel.search("a photo")
    assert len(panel.marks) == 1 and panel.marks.positive  # back to the first search: its marks again


def test_feedback_on_more_like_this(panel, searcher, store):
    panel.more_like(4)
    panel.feedback(positive=[11])
    vector = store.image_embeddings()[4].astype(np.float32)
    expected = searcher.search(vector, k=12, positive=[11])
    assert [hit.index for hit in panel.results] == [hit.index for hit in expected]
    assert "more like photo_00004.jpg" in panel.status


def test_feedback_before_a_search_or_with_bad_rows_is_explained(panel):
    panel.feedback(positive=[1])
    assert "Search first" in panel.error
    panel.search("a photo")
    panel.feedback(positive=[1], negative=[1])
    assert "both in positive and negative" in panel.error
    panel.feedback(positive=[500])
    assert "out of range" in panel.error
