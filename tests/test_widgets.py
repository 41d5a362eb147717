"""SearchPanel driven from code: real ipywidgets, a real HDF5 store, the offline tiny model."""

from __future__ import annotations

import io
import re

import ipywidgets as widgets
import pytest
from PIL import Image

from clipwidgets.store import EmbeddingStore
from clipwidgets.thumbnails import ThumbnailCache, disk_cache_dir, placeholder_jpeg
from clipwidgets.widgets import (
    CardText,
    SearchPanel,
    card_html,
    failure_text,
    page_count,
    page_label,
    status_text,
)

NUM_IMAGES = 30
STATUS = re.compile(r"^(\d+) results? in \d+ ms")


def build_store(store_factory, folder=None, *, count=NUM_IMAGES, meta=None):
    """A store of `count` generated photos in `folder`/images with one caption each, open for reading."""
    captions = [f"generated photo number {i} <b>bold</b>" for i in range(count)]
    path = store_factory(images=count, meta=meta, texts=captions, links=list(range(count)), folder=folder,
                         name="photos.h5")
    return EmbeddingStore.open(path)


@pytest.fixture(scope="module")
def store(store_factory):
    return build_store(store_factory)


@pytest.fixture
def panel(store, tiny_encoder):
    return SearchPanel(store, tiny_encoder, per_page=12, disk_cache=False)


def jpeg_size(data: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(data)).size


def shown_names(panel):
    return [card.children[1].value for card in panel.grid.children]


def test_search_renders_one_card_per_result_sorted_by_score(panel):
    hits = panel.search("a red ball on green grass")
    assert len(hits) == 12 and len(panel.grid.children) == 12
    scores = [hit.score for hit in hits]
    assert scores == sorted(scores, reverse=True)
    match = STATUS.match(panel.status)
    assert match and int(match.group(1)) == NUM_IMAGES
    assert panel.error is None
    for card, hit in zip(panel.grid.children, hits, strict=True):
        image, text = card.children[0], card.children[1]
        assert image.value[:2] == b"\xff\xd8" and max(jpeg_size(image.value)) <= 160
        assert hit.path in text.value and f"{hit.score:.3f}" in text.value
    assert panel.page_label.value == "1–12 of 30"
    assert panel.previous_button.disabled and not panel.next_button.disabled


def test_pressing_enter_in_the_query_box_searches(panel):
    panel.query_box.value = "a blue sky"  # what the browser sends on Enter (continuous_update=False)
    assert len(panel.results) == 12 and STATUS.match(panel.status)


def test_the_search_button_searches_the_query_box(panel):
    panel.query_box.value = "a yellow house"
    first = panel.results_text()
    panel.search_button.click()
    assert panel.results_text() == first and len(panel.results) == 12


def test_paging_walks_through_all_results_and_back(panel):
    first = panel.search("a photo")
    second = panel.next_page()
    assert panel.page == 1 and panel.page_label.value == "13–24 of 30"
    assert {hit.index for hit in first}.isdisjoint(hit.index for hit in second)
    third = panel.next_page()
    assert len(third) == 6 and len(panel.grid.children) == 6 and panel.next_button.disabled
    assert panel.next_page() == third  # no page after the last
    assert {hit.index for hit in first + second + third} == set(range(NUM_IMAGES))
    panel.previous_page()
    panel.previous_page()
    assert [hit.index for hit in panel.results] == [hit.index for hit in first]
    assert panel.previous_button.disabled


def test_hidden_cards_drop_their_thumbnails(panel):
    panel.search("a photo")
    panel.next_page()
    panel.next_page()
    unused = [card for card in panel._cards if card.box not in panel.grid.children]
    assert len(unused) == 6 and all(card.image.value == b"" for card in unused)


def test_per_page_change_reruns_the_search_from_page_one(panel):
    panel.search("a photo")
    panel.next_page()
    panel.per_page_box.value = 24
    assert panel.page == 0 and len(panel.results) == 24 and len(panel.grid.children) == 24


def test_more_like_puts_the_image_itself_first(panel, store):
    hits = panel.more_like(7)
    assert hits[0].index == 7 and len(hits) == 12
    assert "more like photo_00007.jpg" in panel.status and STATUS.match(panel.status)


def test_more_like_this_button_on_a_card(panel):
    panel.search("a green field")
    third = panel.results[2]
    like_button = panel.grid.children[2].children[2].children[0]
    assert like_button.description == "More like this"
    like_button.click()
    assert panel.results[0].index == third.index
    assert panel.error is None


def test_negative_prompt_changes_the_ranking(panel):
    plain = [hit.index for hit in panel.search("a photo", negative="")]
    pushed = [hit.index for hit in panel.search("a photo", negative="dark night")]
    assert plain != pushed
    assert panel.negative_box.value == "dark night"


def test_min_score_keeps_only_results_above_it(panel):
    hits = panel.search("a photo")
    threshold = (hits[3].score + hits[4].score) / 2
    panel.min_score_box.value = round(threshold, 6)
    assert all(hit.score >= panel.min_score_box.value for hit in panel.results)
    assert 4 <= panel.total < NUM_IMAGES
    assert STATUS.match(panel.status).group(1) == str(panel.total)


def test_open_shows_large_image_path_and_captions_then_close(panel, store):
    panel.search("a photo")
    open_button = panel.grid.children[0].children[2].children[1]
    open_button.click()
    hit = panel.results[0]
    assert panel.detail.layout.display == "flex"
    assert max(jpeg_size(panel.detail_image.value)) == 320  # originals are 320 px wide: no upscaling
    assert str(store.abspath(hit.index)) in panel.detail_text.value
    assert f"generated photo number {hit.index} &lt;b&gt;bold&lt;/b&gt;" in panel.detail_text.value
    panel.hide_detail()
    assert panel.detail.layout.display == "none" and panel.detail_image.value == b""


def test_show_detail_of_a_missing_position_explains_itself(panel):
    panel.search("a photo")
    panel.show_detail(12)
    assert "no result at position 12" in panel.error and panel.detail.layout.display == "none"


def test_results_text_is_deterministic_and_is_the_repr(store, tiny_encoder):
    texts = []
    for _ in range(2):
        panel = SearchPanel(store, tiny_encoder, per_page=12, disk_cache=False)
        assert panel.results_text() == "SearchPanel: no search yet"
        panel.search("a dog")
        texts.append(panel.results_text())
    assert texts[0] == texts[1]
    lines = texts[0].splitlines()
    assert lines[0] == "12 of 30 results" and len(lines) == 13
    assert all(re.fullmatch(r"\s*\d+  -?\d\.\d{3}  photo_\d{5}\.jpg", line) for line in lines[1:])
    assert repr(panel) == texts[1]
    bundle = panel._repr_mimebundle_()
    assert bundle["text/plain"] == texts[1]
    if int(widgets.__version__.split(".")[0]) >= 8:  # ipywidgets 7 displays through _ipython_display_
        assert "application/vnd.jupyter.widget-view+json" in bundle


def test_thumbnails_are_made_once_then_served_from_memory(store, tiny_encoder):
    panel = SearchPanel(store, tiny_encoder, per_page=12, disk_cache=False)
    panel.search("a photo")
    assert panel.thumbnails.stats.made == 12
    panel.search("a photo")
    panel.previous_page()
    assert panel.thumbnails.stats.made == 12 and panel.thumbnails.stats.memory_hits == 12


def test_disk_cache_serves_a_new_panel_without_decoding(tmp_path, store, tiny_encoder):
    disk = tmp_path / "thumbs"
    first = SearchPanel(store, tiny_encoder, per_page=12, thumbnails=ThumbnailCache(store, disk_dir=disk))
    first.search("a photo")
    second = SearchPanel(store, tiny_encoder, per_page=12, thumbnails=ThumbnailCache(store, disk_dir=disk))
    second.search("a photo")
    assert second.thumbnails.stats.made == 0 and second.thumbnails.stats.disk_hits == 12
    assert [c.children[0].value for c in first.grid.children] == \
        [c.children[0].value for c in second.grid.children]


def test_default_disk_cache_lives_next_to_the_store(tmp_path, tiny_encoder, store_factory):
    store = build_store(store_factory, tmp_path, count=4)
    panel = SearchPanel(store, tiny_encoder)
    panel.search("a photo")
    folder = disk_cache_dir(store.path)
    assert folder == tmp_path / "photos.h5.thumbs"
    assert len(list(folder.rglob("*.jpg"))) == 4


def test_a_page_adds_well_under_a_megabyte_to_a_saved_notebook(store, tiny_encoder):
    panel = SearchPanel(store, tiny_encoder, per_page=24, disk_cache=False)
    panel.search("a photo")
    panel.show_detail(0)

    def image_bytes(widget):
        own = len(widget.value) if isinstance(widget, widgets.Image) else 0
        return own + sum(image_bytes(child) for child in getattr(widget, "children", ()))

    assert image_bytes(panel) < 1_000_000


def test_undecodable_original_shows_a_placeholder_and_says_so(tmp_path, tiny_encoder, store_factory):
    store = build_store(store_factory, tmp_path, count=12)
    (tmp_path / "images" / "photo_00003.jpg").write_bytes(b"this is not a jpeg")
    panel = SearchPanel(store, tiny_encoder, per_page=12, disk_cache=False)
    hits = panel.more_like(3)
    assert hits[0].index == 3
    assert panel.grid.children[0].children[0].value == placeholder_jpeg()
    assert all(card.children[0].value != placeholder_jpeg() for card in panel.grid.children[1:])
    assert "1 image could not be shown (photo_00003.jpg)" in panel.status
    assert STATUS.match(panel.status)


def test_deleted_original_is_reported_with_the_fix(tmp_path, tiny_encoder, store_factory):
    store = build_store(store_factory, tmp_path, count=12)
    (tmp_path / "images" / "photo_00005.jpg").unlink()
    panel = SearchPanel(store, tiny_encoder, per_page=12, disk_cache=False)
    panel.more_like(5)
    assert "photo_00005.jpg" in panel.status and "re-run indexing" in panel.status


def test_more_like_a_path_outside_the_image_root_is_refused(panel, store):
    """Nothing outside the store's images is ever read: the request is refused before any file access."""
    (store.image_root.parent / "secret.txt").write_text("not an image")
    for item in ("../secret.txt", str(store.image_root.parent / "secret.txt"), "not_indexed.jpg"):
        assert panel.more_like(item) == [] and panel.grid.children == ()
        assert panel.error and panel.status == panel.error
    assert panel.thumbnails.stats.made == 0


def test_empty_store_shows_a_message_instead_of_raising(tmp_path, tiny_encoder):
    EmbeddingStore.create(tmp_path / "empty.h5", tiny_encoder.meta, tmp_path).close()
    panel = SearchPanel(EmbeddingStore.open(tmp_path / "empty.h5"), tiny_encoder)
    assert "has no images yet" in panel.error and "clipwidgets index" in panel.status
    panel.search("a dog")
    assert "has no images yet" in panel.error and panel.results == [] and panel.grid.children == ()
    assert panel.results_text().startswith("error: ")
    assert "color" in panel.status_line.value


def test_model_mismatch_is_shown_in_the_panel(tmp_path, tiny_encoder, store_factory):
    other = {**tiny_encoder.meta, "name": "ViT-B-32-quickgelu", "pretrained": "openai"}
    store = build_store(store_factory, tmp_path, count=4, meta=other)
    panel = SearchPanel(store, tiny_encoder)
    panel.search("a dog")
    assert panel.error and "ViT-B-32-quickgelu" in panel.error and panel.results == []


@pytest.mark.parametrize("query", ["0:beach", "- dog", "dog + "])
def test_bad_query_is_explained_in_the_status_line(panel, query):
    panel.search("a photo")
    panel.search(query)
    assert panel.error and panel.status == panel.error
    assert panel.results and panel.grid.children  # the previous page stays on screen


def test_blank_query_asks_for_text_without_error(panel):
    panel.search("   ")
    assert panel.error is None and "Type what you are looking for" in panel.status


def test_missing_store_path_is_shown_in_the_panel(tmp_path):
    panel = SearchPanel(str(tmp_path / "nowhere.h5"))
    assert panel.error and "does not exist" in panel.error
    assert panel.search("a dog") == [] and panel.more_like(0) == []


def test_paging_and_status_functions():
    assert page_count(0, 24) == 1 and page_count(24, 24) == 1 and page_count(25, 24) == 2
    assert page_label(0, 24, 0) == "no results"
    assert page_label(1, 24, 30) == "25–30 of 30"
    assert status_text(1, 3.4) == "1 result in 3 ms"
    assert status_text(30, 17.6, like="a.jpg") == "30 results in 18 ms (more like a.jpg)"
    assert failure_text([("a.jpg", "bad"), ("b.jpg", "worse")]) == \
        "2 images could not be shown (a.jpg, b.jpg): bad"


def test_card_html_escapes_names_and_captions():
    text = card_html(CardText("<x>.jpg", "0.250", ('a "cat" <script>',)))
    assert "<script>" not in text and "&lt;x&gt;.jpg" in text and "&quot;cat&quot;" in text

