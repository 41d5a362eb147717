"""The public API is declared: every module has `__all__`, every listed name exists, every public
top-level name of a module is listed (anything else is underscored), and the package's own API fits
on a screen."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import logging
import pkgutil
from pathlib import Path

import pytest

import clipwidgets

PACKAGE_DIR = Path(clipwidgets.__file__).parent
MODULES = sorted(info.name for info in pkgutil.walk_packages([str(PACKAGE_DIR)], "clipwidgets.")
                 if str(importlib.util.find_spec(info.name).origin).endswith(".py"))  # not compiled ones
SCREEN_LINES = 40


def defined_names(module) -> set[str]:
    """Names a module's source binds at top level itself: functions, classes and assignments."""
    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    names = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(target.id for target in node.targets if isinstance(target, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names - {"__all__", "__version__"}


def test_the_walk_finds_every_module():
    assert {"clipwidgets.cli", "clipwidgets.settings", "clipwidgets.types",
            "clipwidgets.datasets.flickr8k"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_module_declares_its_public_names(name):
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert isinstance(exported, list), f"{name} has no __all__ list"
    assert len(exported) == len(set(exported)), f"{name}.__all__ lists a name twice"
    missing = [item for item in exported if not hasattr(module, item)]
    assert not missing, f"{name}.__all__ lists names it does not have: {missing}"
    undeclared = sorted(
        item for item in defined_names(module) - set(exported)
        if not item.startswith("_") and not isinstance(getattr(module, item, None), logging.Logger))
    assert not undeclared, (f"{name} defines public names that are not in __all__: {undeclared}; "
                            "list them if they are API, else prefix them with an underscore")


def test_package_api_fits_on_a_screen_and_comes_from_the_modules_apis():
    assert len(clipwidgets.__all__) <= SCREEN_LINES
    for item in clipwidgets.__all__:
        if item == "__version__":
            continue
        owner = importlib.import_module(f"clipwidgets.{clipwidgets._EXPORTS[item]}")
        assert item in owner.__all__, f"clipwidgets.{item} is not in {owner.__name__}.__all__"
    assert dir(clipwidgets) == sorted(clipwidgets.__all__)

