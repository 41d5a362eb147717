"""Write NoteBooks/*.ipynb from their sources, NoteBooks/src/*.py (jupytext percent format, linted by ruff).

The sources are the single source of truth: edit them, never the .ipynb files. `--check` exits 1 when
a committed notebook's cells differ from its source (outputs are not compared); tests/test_notebooks.py
runs it. The notebooks are committed with the outputs of the offline mode CI checks them in (the
`tiny` model on a generated Flickr8k look-alike), so refresh them through the test script, which
prepares that mode:

    bash scripts/test-notebooks.sh --update

Only small text outputs are kept: images, widgets, progress bars (stderr) and any output that shows
the temporary data folder are dropped, so the files stay a few kilobytes and free of machine paths.
A source cell starting with `# NBVAL_CHECK_OUTPUT` has its output compared by nbval.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "NoteBooks"
SOURCE_DIR = "src"  # below the notebook folder
CELL_TIMEOUT_S = 600
MAX_OUTPUT_CHARS = 4000
CHECK = "# NBVAL_CHECK_OUTPUT"


def sources(notebook_dir: Path) -> dict[str, Path]:
    """{notebook file name: its source}, for every source of `notebook_dir`."""
    found = sorted((notebook_dir / SOURCE_DIR).glob("*.py"))
    if not found:
        raise SystemExit(f"No notebook sources in {notebook_dir / SOURCE_DIR}.")
    return {path.with_suffix(".ipynb").name: path for path in found}


def notebook_metadata() -> dict:
    """Kernel and language only (no Python version, no widget state), so that reruns diff cleanly."""
    return {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }


def build(name: str, source: Path) -> nbformat.NotebookNode:
    """The notebook of one source, with stable cell ids (so that rebuilding it changes nothing that did
    not change) and no jupytext metadata."""
    notebook = jupytext.read(source, fmt="py:percent")
    notebook.metadata = notebook_metadata()
    stem = name.split("_")[0]
    for i, cell in enumerate(notebook.cells):
        cell.id = f"nb{stem}-{i:02d}"
        cell.metadata = {}
    return notebook


def cells_of(notebook: nbformat.NotebookNode) -> list[tuple[str, str, str]]:
    """What --check compares: (id, type, source) of each cell; outputs and execution counts are not."""
    return [(cell.get("id", ""), cell.cell_type, cell.source) for cell in notebook.cells]


def stale(notebook_dir: Path) -> list[str]:
    """The notebooks of `notebook_dir` that are missing or whose cells differ from their sources."""
    found = []
    for name, source in sources(notebook_dir).items():
        path = notebook_dir / name
        if not path.is_file() or cells_of(nbformat.read(path, as_version=4)) != cells_of(build(name, source)):
            found.append(name)
    return found


def execute(notebook: nbformat.NotebookNode) -> None:
    """Run every cell in a fresh kernel whose working directory is NoteBooks/ (raises on the first error)."""
    client = NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    client.execute()


def keep_small_outputs(notebook: nbformat.NotebookNode, volatile: list[str]) -> None:
    """Keep plain-text outputs only: drop plots, widgets, stderr (progress bars) and outputs that
    mention a volatile string (the temporary data folder, this checkout); clear run metadata."""
    notebook.metadata = notebook_metadata()
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        cell.metadata.pop("execution", None)
        kept = []
        for output in cell.outputs:
            if output.output_type == "stream" and output.name == "stderr":
                continue
            if output.output_type in ("display_data", "execute_result"):
                if set(output.data) - {"text/plain"}:  # a plot, a widget, HTML: not kept
                    continue
                output.metadata = {}
            text = str(output.get("text", "")) + str(output.get("data", {}).get("text/plain", ""))
            if any(marker in text for marker in volatile):
                if cell.source.startswith(CHECK):
                    raise SystemExit(f"A checked cell prints a volatile path: {cell.source[:80]!r}")
                continue
            if len(text) > MAX_OUTPUT_CHARS:
                raise SystemExit(f"Output of {cell.source[:80]!r} is {len(text)} characters; "
                                 "print less or leave it out.")
            if kept and output.output_type == "stream" and kept[-1].output_type == "stream":
                kept[-1].text += output.text  # one stream output, however the kernel split the prints
            else:
                kept.append(output)
        cell.outputs = kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--execute", action="store_true",
                      help="run each notebook in the offline mode set by scripts/test-notebooks.sh")
    mode.add_argument("--check", action="store_true",
                      help="write nothing; exit 1 when a notebook's cells differ from its source")
    parser.add_argument("--dir", type=Path, default=NOTEBOOK_DIR, help="the notebook folder (default: "
                        "NoteBooks/); its sources are in src/")
    args = parser.parse_args(argv)
    if args.check:
        outdated = stale(args.dir)
        for name in outdated:
            print(f"{args.dir / name} differs from {args.dir / SOURCE_DIR / name.replace('.ipynb', '.py')}: "
                  "run `bash scripts/test-notebooks.sh --update`.", file=sys.stderr)
        return 1 if outdated else 0
    volatile = []
    if args.execute:
        data = os.environ.get("CLIPWIDGETS_DATA", "")
        if os.environ.get("CLIPWIDGETS_MODEL") != "tiny" or not data:
            raise SystemExit("--execute runs in the offline CI mode only: use "
                             "`bash scripts/test-notebooks.sh --update`.")
        volatile = [str(Path(data).parent), str(ROOT)]
    for name, source in sources(args.dir).items():
        notebook = build(name, source)
        if args.execute:
            print(f"running {name}", file=sys.stderr, flush=True)
            execute(notebook)
            keep_small_outputs(notebook, volatile)
        nbformat.validate(notebook)
        nbformat.write(notebook, args.dir / name)
        print(f"wrote {args.dir / name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
