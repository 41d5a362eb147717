"""The CLI's defaults come from clipwidgets.settings, the one place they are decided."""

from __future__ import annotations

import pytest

from clipwidgets.cli import build_parser
from clipwidgets.settings import DEFAULT_DATA, DEFAULT_HOST, DEFAULT_IMAGES, DEFAULT_PORT, DEFAULT_STORE


@pytest.mark.parametrize("argv", [["app"], ["flickr8k", "index"], ["flickr8k", "evaluate"]])
def test_default_store(argv):
    assert build_parser().parse_args(argv).store == str(DEFAULT_STORE)


@pytest.mark.parametrize("argv", [["flickr8k", "download"], ["flickr8k", "index"], ["flickr8k", "evaluate"]])
def test_default_data_folder(argv):
    assert build_parser().parse_args(argv).data_dir == str(DEFAULT_DATA)


def test_app_defaults_and_help(capsys):
    args = build_parser().parse_args(["app"])
    assert (args.images, args.host, args.port) == (str(DEFAULT_IMAGES), DEFAULT_HOST, DEFAULT_PORT)
    assert (args.model, args.pretrained) == (None, None)  # chosen by clipwidgets.model_choice
    with pytest.raises(SystemExit):
        build_parser().parse_args(["app", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert f"(default: {DEFAULT_STORE})" in shown and f"(default: {DEFAULT_PORT})" in shown
