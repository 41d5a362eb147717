"""The committed notebooks are what their sources (NoteBooks/src/*.py) build: one source of truth."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "scripts" / "build_notebooks.py"


def check(notebook_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BUILD), "--check", "--dir", str(notebook_dir)],
                          capture_output=True, text=True, timeout=120, check=False)


def test_every_notebook_has_a_source():
    notebooks = {path.stem for path in (REPO / "NoteBooks").glob("*.ipynb")}
    assert notebooks == {path.stem for path in (REPO / "NoteBooks" / "src").glob("*.py")}


def test_committed_notebooks_match_their_sources():
    done = check(REPO / "NoteBooks")
    assert done.returncode == 0, done.stderr


def test_a_notebook_edited_by_hand_or_a_source_edited_alone_is_caught(tmp_path):
    copy = tmp_path / "NoteBooks"
    shutil.copytree(REPO / "NoteBooks", copy)
    source = copy / "src" / "03_analysis.py"
    source.write_text(source.read_text() + "\n# %%\nprint('a new cell')\n")
    done = check(copy)
    assert done.returncode == 1
    assert "03_analysis.ipynb differs from" in done.stderr and "02_search" not in done.stderr
    subprocess.run([sys.executable, str(BUILD), "--dir", str(copy)], check=True, capture_output=True)
    assert check(copy).returncode == 0
