"""The package stays legible: no module over 500 lines, no class over 300 (issue 19's limits)."""

from __future__ import annotations

import ast
from pathlib import Path

import clipwidgets

PACKAGE = Path(clipwidgets.__file__).parent
MAX_MODULE_LINES = 500
MAX_CLASS_LINES = 300


def test_no_module_or_class_grows_past_its_limit():
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        name = path.relative_to(PACKAGE.parent)
        if len(source.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f"{name}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES:
                too_long.append(f"{name}: class {node.name} has {node.end_lineno - node.lineno + 1} lines")
    assert not too_long, "split these by responsibility: " + "; ".join(too_long)
