"""EmbeddingMap: PCA/UMAP projection, colours, and the link with the SearchPanel (real jupyter-scatter
widget, real ipywidgets, the tiny model)."""

from __future__ import annotations

import numpy as np
import pytest
from test_widgets import build_store

from clipwidgets.embedding_map import EmbeddingMap, kmeans, pca_2d, project
from clipwidgets.errors import InvalidInputError
from clipwidgets.widgets import SearchPanel


@pytest.fixture(scope="module")
def store(tmp_path_factory, store_factory):
    built = build_store(store_factory, tmp_path_factory.mktemp("map"), count=30)
    return built


def test_pca_matches_a_direct_svd():
    rng = np.random.default_rng(1)
    spread = np.array([4.0, 2.0] + [0.3] * 14)
    matrix = (rng.normal(size=(70_000, 16)) * spread).astype(np.float16)  # more than one block
    coords = pca_2d(matrix)
    centred = matrix.astype(np.float64) - matrix.astype(np.float64).mean(axis=0)
    _, _, axes = np.linalg.svd(centred, full_matrices=False)
    expected = centred @ axes[:2].T
    for column in range(2):  # the sign of an axis is a convention
        sign = np.sign(expected[:, column] @ coords[:, column])
        assert np.allclose(coords[:, column], sign * expected[:, column], atol=1e-2)
    sampled = pca_2d(matrix, sample=20_000)  # axes from a sample: the same map for a clear spectrum
    for column in range(2):
        assert abs(np.corrcoef(sampled[:, column], coords[:, column])[0, 1]) > 0.9999


def test_kmeans_separates_clear_clusters():
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(3, 8)) * 10
    truth = np.repeat(np.arange(3), 50)
    matrix = centres[truth] + rng.normal(size=(150, 8))
    found = kmeans(matrix, 3)
    for number in range(3):  # each true cluster falls in exactly one found cluster
        assert len(set(found[truth == number].tolist())) == 1
    assert len(set(found.tolist())) == 3


def test_unknown_method_and_colour_are_explained(store):
    with pytest.raises(InvalidInputError, match="method='tsne'"):
        project(np.eye(4, dtype=np.float32), "tsne")
    with pytest.raises(InvalidInputError, match="color_by='size'"):
        EmbeddingMap(store, color_by="size")
    with pytest.raises(InvalidInputError, match="clusters=0"):
        EmbeddingMap(store, color_by="cluster", clusters=0)


def test_map_of_a_store_draws_every_image(store):
    view = EmbeddingMap(store)
    points = np.asarray(view.widget.points)
    assert view.method == "pca" and points.shape[0] == store.num_images
    assert np.allclose(view.coords, pca_2d(store.image_embeddings()))


def test_colour_by_split_and_cluster(tmp_path, store_factory):
    from clipwidgets.store import EmbeddingStore

    built = build_store(store_factory, tmp_path, count=12)
    built.close()
    with EmbeddingStore.open(tmp_path / "photos.h5", "a") as writable:
        writable.set_subset("test", [f"photo_{i:05d}.jpg" for i in range(4)])
    view = EmbeddingMap(EmbeddingStore.open(tmp_path / "photos.h5"))
    assert view.color_by == "split"
    colours = channel(view, "color")
    assert len(set(colours[:4].tolist())) == 1 and len(set(colours[4:].tolist())) == 1
    assert colours[0] != colours[4]  # "test" and the rest differ
    view.color("cluster")
    assert view.color_by == "cluster" and view._cluster_of is not None
    assert len(set(view._cluster_of.tolist())) > 1


def channel(view, name):
    """The values the widget sends to the browser for the `name` encoding ("color" or "size")."""
    column = {"valueA": 2, "valueB": 3}[getattr(view.widget, f"{name}_by")]
    return np.asarray(view.widget.points)[:, column]


@pytest.fixture
def linked(store, tiny_encoder):
    panel = SearchPanel(store, tiny_encoder, per_page=12, disk_cache=False)
    return panel, EmbeddingMap(panel, color_by="score")


def test_results_are_highlighted_on_the_map(linked):
    panel, view = linked
    hits = panel.search("a red ball")
    assert view.highlighted.tolist() == sorted(hit.index for hit in hits)
    sizes = channel(view, "size")
    assert np.flatnonzero(sizes > 0.5).tolist() == view.highlighted.tolist()
    panel.next_page()
    assert view.highlighted.tolist() == sorted(hit.index for hit in panel.results)


def test_score_colours_follow_the_query(linked, tiny_encoder, store):
    panel, view = linked
    assert np.allclose(view.scores(), 0)  # no query yet
    panel.search("a red ball")
    query = tiny_encoder.encode_texts(["a red ball"])[0]
    expected = store.image_embeddings().astype(np.float32) @ query
    assert np.allclose(view.scores(), expected, atol=1e-4)
    assert np.argmax(channel(view, "color")) == np.argmax(expected)  # the map's colours follow


def test_a_selection_on_the_map_is_shown_in_the_panel(linked):
    panel, view = linked
    view.widget.selection = np.array([3, 9, 14, 22])  # what a lasso in the browser sends
    assert sorted(hit.index for hit in panel.results) == [3, 9, 14, 22]
    assert "among 4 chosen images" in panel.status
    view.select([5, 6])
    assert sorted(hit.index for hit in panel.results) == [5, 6]
    assert view.selection().tolist() == [5, 6]


def test_selection_is_ranked_by_the_query_when_there_is_one(linked):
    panel, view = linked
    ranked = [hit.index for hit in panel.search("a red ball")]
    chosen = ranked[::3]
    view.select(chosen)
    assert [hit.index for hit in panel.results] == chosen  # same order as in the full ranking


@pytest.mark.slow
def test_umap_when_installed(store):
    pytest.importorskip("umap")
    view = EmbeddingMap(store, method="umap")
    assert view.method == "umap" and view.coords.shape == (store.num_images, 2)
    assert np.isfinite(view.coords).all()
