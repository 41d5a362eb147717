"""ExploreTools: the map, near-duplicates and labels sections beside a panel (what the app shows under
its panel), built when opened and wired to the panel."""

from __future__ import annotations

import ipywidgets as widgets
import numpy as np
import pytest
from test_widgets import build_store

from clipwidgets.duplicates import find_duplicates
from clipwidgets.duplicates_view import DuplicateReview
from clipwidgets.embedding_map import EmbeddingMap
from clipwidgets.explore_tools import SECTIONS, ExploreTools
from clipwidgets.widgets import SearchPanel


@pytest.fixture(scope="module")
def store(store_factory, tmp_path_factory):
    return build_store(store_factory, tmp_path_factory.mktemp("tools"), count=20)


@pytest.fixture
def tools(store, tiny_encoder):
    panel = SearchPanel(store, tiny_encoder, per_page=8, disk_cache=False)
    return ExploreTools(panel)


def buttons(box: widgets.Widget) -> dict[str, widgets.Button]:
    found, todo = {}, [box]
    while todo:
        widget = todo.pop()
        if isinstance(widget, widgets.Button):
            found[widget.description] = widget
        todo += list(getattr(widget, "children", ()))
    return found


def test_sections_are_built_only_when_opened(tools):
    assert [tools.get_title(i) for i in range(3)] == list(SECTIONS) and tools.selected_index is None
    assert all(not box.children for box in tools.children) and tools.map is None
    box = tools.show_section("map")
    assert isinstance(tools.map, EmbeddingMap) and tools.map.panel is tools.panel
    assert tools.map.widget in box.children and len(tools.map.coords) == 20
    tools.panel.search("a red ball")
    assert sorted(tools.map.highlighted.tolist()) == sorted(hit.index for hit in tools.panel.results)
    tools.map.select([1, 2, 3])  # a lasso on the map shows those images in the panel
    assert sorted(hit.index for hit in tools.panel.results) == [1, 2, 3]
    with pytest.raises(ValueError, match="section 'plot'"):
        tools.show_section("plot")


def test_duplicates_section_finds_the_groups(tools, store):
    box = tools.show_section("near-duplicates")
    threshold = box.children[0].children[0]
    threshold.value = 0.99
    buttons(box)["find near-duplicates"].click()
    assert isinstance(tools.duplicates, DuplicateReview)
    assert tools.duplicates.groups == find_duplicates(store, 0.99)
    assert tools.duplicates in box.children[1].children


def test_labels_section_sets_the_panels_label_filter(tools, store):
    box = tools.show_section("labels")
    text = box.children[0].children[0]
    text.value = "red, green, blue"
    buttons(box)["label images"].click()
    assert tools.labels.labels == ("red", "green", "blue") and "red:" in box.children[1].value
    assert list(tools.panel.label_box.options)[1:] == ["red", "green", "blue"]
    label = max(tools.labels.counts(), key=tools.labels.counts().get)
    shown = tools.panel.filter_label(label)
    assert shown and {hit.index for hit in shown} <= set(tools.labels.rows(label).tolist())
    text.value = "red"
    buttons(box)["label images"].click()
    assert "two labels or more" in box.children[1].value


def test_the_app_view_has_the_tools(store, tiny_encoder):
    from clipwidgets.app.shared import SharedSearch

    shared = SharedSearch(store.path, tiny_encoder)
    try:
        view = shared.new_view()
        assert isinstance(view.tools, ExploreTools) and view.tools.panel is view.panel
        assert view.children[-1] is view.tools
        view.tools.show_section("map")
        assert np.isfinite(view.tools.map.coords).all()
    finally:
        shared.close()
