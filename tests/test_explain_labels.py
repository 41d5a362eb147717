"""Why this result (scores per part, best caption, occlusion heat map) and zero-shot labels."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
from PIL import Image
from test_widgets import build_store

from clipwidgets.errors import InvalidInputError
from clipwidgets.explain import heatmap_overlay, occlusion_map
from clipwidgets.searcher import Searcher
from clipwidgets.widgets import SearchPanel


@pytest.fixture(scope="module")
def store(tmp_path_factory, store_factory):
    return build_store(store_factory, tmp_path_factory.mktemp("explain"), count=24)


@pytest.fixture
def searcher(store, tiny_encoder):
    return Searcher(store, tiny_encoder)


def test_part_contributions_add_up_to_the_score(searcher, tiny_encoder):
    query = "a red ball + 2:green grass - a dark night"
    hit = searcher.search(query, k=5, negative="snow")[3]
    found = searcher.explain(hit, query, negative="snow", heatmap=False)
    assert found.image_score == pytest.approx(hit.score, abs=1e-5)
    assert [(part.label, part.weight) for part in found.parts] == [
        ("a red ball", 1.0), ("green grass", 2.0), ("a dark night", -1.0), ("snow", -1.0)]
    assert sum(part.contribution for part in found.parts) == pytest.approx(hit.score, abs=1e-5)
    image = searcher.store.image_embeddings()[hit.index].astype(np.float64)
    for part in found.parts:
        text = tiny_encoder.encode_texts([part.label])[0].astype(np.float64)
        assert part.cosine == pytest.approx(text @ image, abs=1e-4)
    assert found.heatmap is None and "adds" in found.to_text()


def test_best_caption_is_the_closest_caption(searcher, store, tiny_encoder):
    hit = searcher.search("a photo", k=1)[0]
    found = searcher.explain(hit.index, "a photo", heatmap=False)
    caption = store.captions(hit.index)[0]
    query = tiny_encoder.encode_texts(["a photo"])[0].astype(np.float64)
    assert found.caption == caption
    assert found.caption_score == pytest.approx(tiny_encoder.encode_texts([caption])[0] @ query, abs=1e-4)
    assert "&lt;b&gt;" in found.to_html()  # captions are escaped


def test_feedback_terms_are_explained_too(searcher):
    hit = searcher.search("a photo", k=3, positive=[5, 6], negative_images=[1])[2]
    found = searcher.explain(hit, "a photo", positive=[5, 6], negative_images=[1], heatmap=False)
    labels = [part.label for part in found.parts]
    assert labels == ["a photo", "marked relevant (2)", "marked irrelevant (1)"]
    assert sum(part.contribution for part in found.parts) == pytest.approx(hit.score, abs=1e-5)


def test_a_hit_carries_its_query(searcher):
    """explain(hit) takes the query, negative text and feedback marks from the search that made the hit,
    and gives what the explicit form gives."""
    query = "a red ball + 2:green grass"
    hit = searcher.search(query, k=4, negative="snow", positive=[5], negative_images=[1])[3]
    found = searcher.explain(hit, heatmap=False)
    explicit = searcher.explain(hit, query, negative="snow", positive=[5], negative_images=[1], heatmap=False)
    assert found.parts == explicit.parts and found.image_score == explicit.image_score
    assert [part.label for part in found.parts] == ["a red ball", "green grass", "snow",
                                                    "marked relevant (1)", "marked irrelevant (1)"]
    assert found.image_score == pytest.approx(hit.score, abs=1e-5)
    other = searcher.explain(hit, "a dark night", heatmap=False)  # an explicit query wins
    assert [part.label for part in other.parts] == ["a dark night"]


@pytest.mark.parametrize("ranking", ["more_like", "search_many", "search_vector"])
def test_every_ranking_hit_can_be_explained(searcher, ranking):
    if ranking == "more_like":
        hit = searcher.more_like(3, k=3, negative="grass")[2]
    elif ranking == "search_many":
        hit = searcher.search_many(["a photo", "a red ball - grass"], k=3)[1][2]
    else:
        hit = searcher.search_vector(searcher.store.image_vectors([7])[0].astype(np.float32), k=3)[1]
    found = searcher.explain(hit, heatmap=False)
    assert found.image_score == pytest.approx(hit.score, abs=1e-5)
    assert sum(part.contribution for part in found.parts) == pytest.approx(hit.score, abs=1e-5)


def test_explain_without_a_query_needs_a_hit(searcher):
    with pytest.raises(InvalidInputError, match="needs the query"):
        searcher.explain(3, heatmap=False)
    hit = searcher.search("a photo", k=1)[0]
    assert hit.origin.query == "a photo" and dataclasses.replace(hit, origin=None) == hit  # not compared
    assert "origin" not in repr(hit) and "origin" not in hit.to_record()


class QuadrantEncoder:
    """A deterministic stand-in: the embedding depends only on the top-left quarter of the image."""

    def encode_images(self, images):
        out = []
        for image in images:
            pixels = np.asarray(image.convert("RGB"), dtype=np.float64) / 255
            h, w = pixels.shape[:2]
            corner = pixels[: h // 2, : w // 2].reshape(-1, 3).mean(axis=0)
            vector = np.concatenate([corner, [0.2]])
            out.append(vector / np.linalg.norm(vector))
        return np.array(out, dtype=np.float32)


def test_occlusion_heat_lies_where_the_model_looks():
    pixels = np.zeros((120, 120, 3), dtype=np.uint8)
    pixels[:60, :60] = (250, 20, 20)  # a red square in the top-left quarter, the rest black
    image = Image.fromarray(pixels)
    query = QuadrantEncoder().encode_images([image])[0]
    heat = occlusion_map(QuadrantEncoder(), image, query, grid=4)
    assert heat.shape == (4, 4) and heat.max() == pytest.approx(1.0)
    assert (heat[:2, :2] > 0.5).all()
    assert np.allclose(heat[2:, :], 0) and np.allclose(heat[:, 2:], 0)
    overlay = heatmap_overlay(image, heat)
    assert overlay.size == image.size
    assert overlay.getpixel((100, 100)) == (0, 0, 0)  # no heat: unchanged
    assert overlay.getpixel((10, 10)) != (250, 20, 20)  # heat: veiled


def test_heat_map_with_the_real_model(searcher):
    hit = searcher.search("a photo", k=1)[0]
    found = searcher.explain(hit, "a photo", grid=3)
    assert found.heatmap.shape == (3, 3) and found.heatmap.min() >= 0 and found.heatmap.max() <= 1
    with pytest.raises(InvalidInputError, match="grid=0"):
        searcher.explain(hit, "a photo", grid=0)


def test_heat_map_needs_an_encoder(store):
    with pytest.raises(InvalidInputError, match="heatmap=False"):
        Searcher(store).explain(0, np.ones(store.dim, dtype=np.float32))


def test_why_this_result_in_the_detail_view(store, tiny_encoder):
    panel = SearchPanel(store, tiny_encoder, per_page=12, disk_cache=False)
    panel.search("a red ball - grass")
    panel.show_detail(2)
    plain = panel.detail_image.value
    why = panel.detail.children[1].children[1].children[0]
    assert why.description == "why this result?"
    why.click()
    assert panel.error is None
    assert "image score" in panel.detail.explanation.value and "grass" in panel.detail.explanation.value
    assert panel.detail_image.value != plain
    assert Image.open(io.BytesIO(panel.detail_image.value)).format == "JPEG"
    found = panel.explain(2, heatmap=False)
    assert found.image_score == pytest.approx(panel.results[2].score, abs=1e-5)


def test_classify_gives_each_image_its_closest_label(searcher, store, tiny_encoder):
    labels = ["red", "green", "blue"]
    found = searcher.classify(labels, template="a {} photo")
    prompts = tiny_encoder.encode_texts([f"a {label} photo" for label in labels]).astype(np.float64)
    cosines = store.image_embeddings().astype(np.float64) @ prompts.T
    assert found.top.tolist() == cosines.argmax(axis=1).tolist()
    assert np.allclose(found.score, cosines.max(axis=1), atol=1e-4)
    assert ((found.probability > 1 / 3 - 1e-6) & (found.probability <= 1)).all()
    assert sum(found.counts().values()) == len(found) == store.num_images
    rows = found.rows(found.label_of(0))
    assert 0 in rows and list(found.score[rows]) == sorted(found.score[rows], reverse=True)
    assert found.to_records()[0]["label"] == found.label_of(0)


def test_classify_reads_a_segmented_store_block_by_block(tmp_path, tiny_encoder, monkeypatch):
    """Two commits (two segments) and removed images (tombstones): every live row gets its own label,
    without a copy of the whole matrix."""
    from clipwidgets.store import EmbeddingStore

    vectors = np.random.default_rng(3).normal(size=(40, int(tiny_encoder.meta["embed_dim"])))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    paths = [f"img_{i:02d}.jpg" for i in range(len(vectors))]
    path = tmp_path / "two.h5"
    with EmbeddingStore.create(path, tiny_encoder.meta, tmp_path / "images") as writer:
        for chunk in (slice(0, 25), slice(25, 40)):
            count = len(paths[chunk])
            writer.add_images(paths[chunk], vectors[chunk], sizes=[1] * count, mtimes_ns=[1] * count,
                              widths=[8] * count, heights=[8] * count)
        writer.remove([paths[3], paths[30]])
    with Searcher(path, tiny_encoder) as two_segments:
        assert len(two_segments.store.vector_blocks()) == 2
        expected = two_segments.store.image_embeddings().astype(np.float64)
        monkeypatch.setattr(two_segments.store, "image_embeddings", lambda: pytest.fail("copied the store"))
        found = two_segments.classify(["red", "green", "blue"])
    prompts = tiny_encoder.encode_texts([f"a photo of a {label}" for label in found.labels])
    cosines = expected @ prompts.astype(np.float64).T
    assert len(found) == len(found.paths) == 38 and "img_03.jpg" not in found.paths
    assert found.top.tolist() == cosines.argmax(axis=1).tolist()
    assert np.allclose(found.score, cosines.max(axis=1), atol=1e-3)


@pytest.mark.parametrize(("labels", "options", "message"), [
    ([], {}, "at least one label"),
    ("dog", {}, "list"),
    (["dog", "dog"], {}, "different"),
    (["dog", " "], {}, "non-empty"),
    (["dog"], {"template": "a photo"}, "must contain"),
])
def test_bad_labels_are_explained(searcher, labels, options, message):
    with pytest.raises(InvalidInputError, match=message):
        searcher.classify(labels, **options)


def test_the_panel_filters_by_label(store, tiny_encoder):
    panel = SearchPanel(store, tiny_encoder, per_page=12, disk_cache=False)
    labels = panel.searcher.classify(["red", "green", "blue", "dark"])
    panel.set_labels(labels)
    assert panel.label_box.layout.display == "flex"
    winner = max(labels.counts(), key=labels.counts().get)
    panel.filter_label(winner)  # before any search: the label's images
    assert {hit.index for hit in panel.results} <= set(labels.rows(winner).tolist())
    assert panel.total == labels.counts()[winner]
    panel.search("a photo")
    assert panel.total == labels.counts()[winner]
    assert all(labels.label_of(hit.index) == winner for hit in panel.results)
    panel.filter_label(None)
    assert panel.total == store.num_images
