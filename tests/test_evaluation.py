"""Retrieval and agreement maths on hand-made embeddings whose answers are known."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from clipwidgets.datasets.flickr8k import ExpertAnnotation
from clipwidgets.errors import InvalidInputError
from clipwidgets.evaluation import (
    evaluate_store,
    failures,
    human_agreement,
    image_to_text_ranks,
    kendall_tau_c,
    recall_at_k,
    text_to_image_ranks,
)
from clipwidgets.store import EmbeddingStore


def _unit(*values: float) -> np.ndarray:
    vector = np.array(values, dtype=np.float32)
    return vector / np.linalg.norm(vector)


def _tau_c_by_definition(x, y) -> float:
    """Pair-by-pair tau-c, independent of the vectorised implementation."""
    s = sum(np.sign(x[i] - x[j]) * np.sign(y[i] - y[j]) for i, j in itertools.combinations(range(len(x)), 2))
    m = min(len(set(x)), len(set(y)))
    return 2 * s / (len(x) ** 2 * (m - 1) / m)


def test_identity_similarity_gives_perfect_recall():
    embeddings = np.eye(6, dtype=np.float32)
    links = np.arange(6)
    assert text_to_image_ranks(embeddings, embeddings, links).tolist() == [1] * 6
    assert image_to_text_ranks(embeddings, embeddings, links).tolist() == [1] * 6
    assert recall_at_k(text_to_image_ranks(embeddings, embeddings, links), 1) == 100.0


def test_right_image_ranked_third():
    images = np.eye(3, dtype=np.float32)
    captions = np.stack([_unit(0.8, 0.5, 0.3), _unit(0.5, 0.8, 0.3)])  # both belong to image 2
    ranks = text_to_image_ranks(captions, images, [2, 2])
    assert ranks.tolist() == [3, 3]
    assert recall_at_k(ranks, 1) == 0.0 and recall_at_k(ranks, 5) == 100.0
    assert float(np.median(ranks)) == 3.0


def test_image_to_text_takes_the_best_placed_own_caption():
    images = np.eye(3, dtype=np.float32)
    captions = np.stack([_unit(1, 0, 0), _unit(0.9, 0.1, 0), _unit(0.3, 1, 0), _unit(0.2, 0.1, 1)])
    # cosines: image 0 -> 1.0, 0.994, 0.287, 0.195; image 1 -> 0, 0.110, 0.958, 0.098;
    # image 2 -> 0.976 for the last caption
    links = [0, 0, 1, 2]  # image 0 owns the two best captions: the other own one does not count against it
    assert image_to_text_ranks(images, captions, links).tolist() == [1, 1, 1]
    links = [1, 0, 1, 2]  # image 0 owns only caption 1 (0.994), beaten by caption 0 (1.0)
    assert image_to_text_ranks(images, captions, links).tolist() == [2, 1, 1]


def test_ties_count_against_the_right_answer():
    same = np.tile(_unit(1, 1, 1, 1), (4, 1))
    assert text_to_image_ranks(same, same, [0, 1, 2, 3]).tolist() == [4, 4, 4, 4]
    assert image_to_text_ranks(same, same, [0, 1, 2, 3]).tolist() == [4, 4, 4, 4]


def test_recall_median_and_bad_links():
    ranks = np.array([1, 2, 3, 10, 11])
    assert [recall_at_k(ranks, k) for k in (1, 5, 10)] == [20.0, 60.0, 80.0]
    with pytest.raises(InvalidInputError, match="Image links must lie in 0..1"):
        text_to_image_ranks(np.eye(2), np.eye(2), [0, 2])
    with pytest.raises(InvalidInputError, match="Image 1 has no text linked"):
        image_to_text_ranks(np.eye(2), np.eye(2), [0, 0])


def test_kendall_tau_c_on_hand_computed_examples():
    assert kendall_tau_c([1, 2, 3, 4], [1, 2, 3, 4]) == pytest.approx(1.0)
    assert kendall_tau_c([1, 1, 2, 2], [1, 2, 3, 4]) == pytest.approx(1.0)  # S=4, m=2: 8 / (16 * 1/2)
    assert kendall_tau_c([1, 2, 3], [3, 1, 2]) == pytest.approx(-1 / 3)  # S=-1, m=3: -2 / 6
    assert kendall_tau_c([1, 1, 2, 2, 3], [1, 2, 1, 3, 3]) == pytest.approx(0.48)  # S=4: 8 / (25 * 2/3)
    assert np.isnan(kendall_tau_c([1, 1, 1], [1, 2, 3]))


def test_kendall_tau_c_matches_the_definition_on_tied_data():
    rng = np.random.default_rng(0)
    scores = rng.integers(1, 5, 60).astype(float)  # like expert scores: many ties
    cosines = np.round(scores * 0.05 + rng.normal(0, 0.08, 60), 2)
    expected = _tau_c_by_definition(cosines, scores)
    assert kendall_tau_c(cosines, scores) == pytest.approx(expected)
    assert kendall_tau_c(scores, cosines) == pytest.approx(expected)
    assert kendall_tau_c(cosines, -scores) == pytest.approx(-expected)


def test_kendall_tau_c_matches_scipy_when_installed():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    x, y = rng.integers(1, 5, 200), rng.normal(size=200)
    assert kendall_tau_c(x, y) == pytest.approx(stats.kendalltau(x, y, variant="c").statistic)


@pytest.fixture
def hand_store(store_factory):
    """Four images along the axes; two captions each; one caption of image 3 points near image 0;
    one free text (a saved query)."""
    names = [f"{i}000_abcdef012{i}.jpg" for i in range(4)]
    captions = [np.eye(4)[i // 2] for i in range(6)] + [_unit(0.9, 0, 0, 0.1), np.eye(4)[3]]
    path = store_factory(images=names, vectors=np.eye(4, dtype=np.float32),
                         meta={"name": "hand", "pretrained": "none", "embed_dim": 4},
                         texts=[f"caption {i}" for i in range(8)] + ["a saved query"],
                         text_vectors=np.stack([*captions, _unit(0, 0, 0, 1)]).astype(np.float32),
                         links=[i // 2 for i in range(8)] + [-1],
                         sources=[f"flickr8k#{i % 2}" for i in range(8)] + ["query"],
                         subsets={"test": names, "train": names[:2]})
    with EmbeddingStore.open(path) as store:
        yield store, names


def test_evaluate_store_on_known_embeddings(hand_store):
    store, names = hand_store
    report = evaluate_store(store, split="test")
    assert (report.images, report.captions) == (4, 8)
    assert report.text_to_image.recall == {1: 87.5, 5: 100.0, 10: 100.0}
    assert report.text_to_image.median_rank == 1.0 and report.text_to_image.mean_rank == 1.125
    assert report.image_to_text.recall[1] == 100.0
    table = report.format_table()
    assert "split 'test': 4 images, 8 captions; model hand/none" in table
    assert "text -> image      87.5   100.0   100.0     1.0     1.1" in table
    assert json.loads(json.dumps(report.to_dict()))["text_to_image"]["recall"]["R@1"] == 87.5

    train = evaluate_store(store, split="train")
    assert (train.images, train.captions) == (2, 4) and train.text_to_image.recall[1] == 100.0
    with pytest.raises(InvalidInputError, match="no split 'dev' .*known: test, train"):
        evaluate_store(store, split="dev")


def test_failure_browser_shows_the_right_image_beside_what_came_first(hand_store):
    store, names = hand_store
    [failure] = failures(store, "test", k=2)
    assert failure.caption == "caption 6" and failure.source == "flickr8k#0"
    assert failure.ground_truth == str(store.abspath(3)) and failure.ground_truth_rank == 2
    assert [path for path, _ in failure.retrieved] == [str(store.abspath(0)), str(store.abspath(3))]
    assert failure.retrieved[0][1] > failure.ground_truth_score == pytest.approx(0.11, abs=0.01)


def test_human_agreement_follows_the_clipscore_protocol(hand_store):
    store, names = hand_store
    rows = [
        ExpertAnnotation(names[0], f"{names[0]}#0", (4, 4, 4)),  # own caption, cosine 1.0: CLIPScore skips it
        ExpertAnnotation(names[0], f"{names[3]}#0", (3, 4, 3)),  # cosine 0.99
        ExpertAnnotation(names[3], f"{names[3]}#0", (2, 2, 3)),  # own caption again, cosine 0.11
        ExpertAnnotation(names[1], f"{names[2]}#1", (1, 1, 2)),  # cosine 0
        ExpertAnnotation(names[2], f"{names[3]}#0", (1, 1, 1)),  # cosine 0
        ExpertAnnotation("9999_missing.jpg", f"{names[0]}#0", (4, 4, 4)),
    ]
    agreement = human_agreement(store, rows)
    assert (agreement.pairs, agreement.missing, agreement.judgments) == (5, 1, 9)
    expected_mean = _tau_c_by_definition([1.0, 0.99, 0.11, 0.0, 0.0], [4, 10 / 3, 7 / 3, 4 / 3, 1])
    assert agreement.tau_c_mean == pytest.approx(100 * expected_mean, abs=1e-6)
    expected = _tau_c_by_definition([0.99] * 3 + [0.0] * 6, [3, 4, 3, 1, 1, 2, 1, 1, 1])
    assert agreement.tau_c == pytest.approx(100 * expected, abs=1e-6)
    with pytest.raises(InvalidInputError, match="None of the 1 expert annotations"):
        human_agreement(store, rows[-1:])
