"""Issue 18 item 9: the panel runs one search per query and pages through the ranking it keeps.

Real ipywidgets, a real HDF5 store and the offline tiny model; the Searcher's methods are wrapped
only to count the calls that reach them.
"""

from __future__ import annotations

import pytest
from test_widgets import NUM_IMAGES, build_store

from clipwidgets.widgets import SearchPanel


@pytest.fixture(scope="module")
def store(tmp_path_factory, store_factory):
    return build_store(store_factory, tmp_path_factory.mktemp("paging"), count=NUM_IMAGES)


@pytest.fixture
def counted(store, tiny_encoder, monkeypatch):
    """A panel whose Searcher counts search / more_like calls (they still run for real)."""
    panel = SearchPanel(store, tiny_encoder, per_page=12, disk_cache=False)
    calls = []
    for name in ("search", "more_like"):
        real = getattr(panel.searcher, name)

        def counting(*args, _real=real, _name=name, **kwargs):
            calls.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(panel.searcher, name, counting)
    return panel, calls


def test_typing_a_query_then_clicking_search_runs_one_search(counted):
    panel, calls = counted
    panel.query_box.value = "a red ball"  # Enter, or the box losing focus when the button is clicked
    panel.search_button.click()
    assert calls == ["search"]
    assert len(panel.results) == 12 and panel.error is None


def test_a_new_query_after_clicking_search_runs_again(counted):
    panel, calls = counted
    panel.query_box.value = "a red ball"
    panel.search_button.click()
    panel.query_box.value = "a blue sky"
    panel.search_button.click()
    assert calls == ["search", "search"]


def test_paging_keeps_the_ranking_and_never_searches_again(counted, store, tiny_encoder):
    panel, calls = counted
    first = panel.search("a photo")
    pages = [first, panel.next_page(), panel.next_page()]
    panel.previous_page()
    assert calls == ["search"]
    expected = SearchPanel(store, tiny_encoder, per_page=NUM_IMAGES, disk_cache=False).search("a photo")
    assert [hit.index for page in pages for hit in page] == [hit.index for hit in expected]
    assert [hit.score for page in pages for hit in page] == [hit.score for hit in expected]


def test_changing_results_per_page_slices_the_kept_ranking(counted):
    panel, calls = counted
    twelve = panel.search("a photo")
    panel.next_page()
    panel.per_page_box.value = 24
    assert calls == ["search"]
    assert panel.page == 0 and [hit.index for hit in panel.results[:12]] == [hit.index for hit in twelve]
    assert len(panel.results) == 24


def test_more_like_pages_without_searching_again(counted):
    panel, calls = counted
    panel.more_like(3)
    panel.next_page()
    panel.previous_page()
    assert calls == ["more_like"]


def test_pages_beyond_the_fetched_depth_extend_the_same_ranking(store, tiny_encoder):
    from clipwidgets.paging import KeptRanking

    searcher = SearchPanel(store, tiny_encoder, disk_cache=False).searcher
    depths = []

    def fetch(depth):
        depths.append(depth)
        return searcher.search("a photo", k=depth)

    ranking = KeptRanking(fetch, 4)
    walked = [hit.index for page in range(NUM_IMAGES // 3) for hit in ranking.page(page, 3)]
    assert walked == [hit.index for hit in searcher.search("a photo", k=NUM_IMAGES)]
    assert depths == [4, 16, 64]  # deeper pages grow the fetch 4x: O(log n) searches for n pages
    assert ranking.page(20, 3) == [] and len(depths) == 3
