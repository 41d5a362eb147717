"""Write NoteBooks/*.ipynb from the cells below; with --execute, run them and keep their small outputs.

The notebooks are committed with the outputs of the offline mode CI checks them in (the `tiny`
model on a generated Flickr8k look-alike), so refresh them through the test script, which prepares
that mode:

    bash scripts/test-notebooks.sh --update

Only small text outputs are kept: images, widgets, progress bars (stderr) and any output that shows
the temporary data folder are dropped, so the files stay a few kilobytes and free of machine paths.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "NoteBooks"
REPOSITORY = "clipwidgets/clipwidgets"  # GitHub owner/name, used by the Colab cell and the badges
CELL_TIMEOUT_S = 600
MAX_OUTPUT_CHARS = 4000
CHECK = "# NBVAL_CHECK_OUTPUT"


def colab_badge(name: str) -> str:
    return (f"[![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"(https://colab.research.google.com/github/{REPOSITORY}/blob/main/NoteBooks/{name})")


COLAB_CELL = f'''\
# In Google Colab: install clipwidgets from GitHub. Colab's own torch, torchvision and ipywidgets are
# kept (--no-deps, then only the packages Colab lacks). Anywhere else this cell does nothing.
import subprocess
import sys

REPOSITORY = "https://github.com/{REPOSITORY}"  # the repository these notebooks come from
if "google.colab" in sys.modules:
    pip = [sys.executable, "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "--no-deps", f"clipwidgets @ git+{{REPOSITORY}}"], check=True)
    subprocess.run([*pip, "open_clip_torch>=2.24", "h5py>=3.8", "tqdm>=4.60"], check=True)
    from google.colab import output

    output.enable_custom_widget_manager()'''

CONFIG_CELL = '''\
from clipwidgets.notebook_env import notebook_config

config = notebook_config()
print(config.describe())'''

OFFLINE_NOTE = '''\
**Where things are.** Paths come from the repository, not from the folder the kernel starts in, and
these environment variables override them: `CLIPWIDGETS_MODEL` (default `ViT-B-32-quickgelu`;
`tiny` is the offline test model with random weights), `CLIPWIDGETS_PRETRAINED` (default `openai`),
`CLIPWIDGETS_DATA` (default `Data/`) and `CLIPWIDGETS_STORE` (default `store/flickr8k.h5`).
CI runs this notebook offline with `tiny` on generated images, and the outputs saved in the file
come from that run: with the real model your numbers and file names will differ.'''

OPEN_OR_BUILD_CELL = '''\
from clipwidgets.model import load_model
from clipwidgets.notebook_env import ensure_store
from clipwidgets.store import EmbeddingStore

encoder = load_model(config.model, config.pretrained)
# Opened on its own (without 01 first), the notebook builds the store: Flickr8k download and indexing.
ensure_store(config, encoder)
store = EmbeddingStore.open(config.store_path)
print(store)'''


def md(text: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_markdown_cell(text)


def code(text: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_code_cell(text)


GENERATE = [
    md(f'''\
# 1. Generate embeddings

{colab_badge("01_generate_embeddings.ipynb")}

Fetch the images (Flickr8k by default: 8,091 photos with five captions each), embed them with CLIP
and keep the vectors in an HDF5 store that the search and analysis notebooks read. Running it again
only embeds what changed: new or edited images, and captions not stored yet.

{OFFLINE_NOTE}'''),
    code(COLAB_CELL),
    code(CONFIG_CELL),
    md('''\
## The data

`ensure_flickr8k` leaves a complete Flickr8k folder alone and otherwise downloads the two archives
(about 1 GB; an interrupted download resumes), checks them and extracts them into the data folder.'''),
    code('''\
from clipwidgets.datasets import load_captions, load_split
from clipwidgets.datasets.flickr8k import flickr8k_paths
from clipwidgets.notebook_env import ensure_flickr8k

status = ensure_flickr8k(config)
paths = flickr8k_paths(config.data_dir)
print(f"Flickr8k in {config.data_dir}: {status}")'''),
    code(f'''\
{CHECK}
images_on_disk = sorted(p.name for p in paths.images.iterdir() if p.suffix.lower() == ".jpg")
captions = load_captions(paths.token, issues=[])  # issues=[]: the known bad lines are dropped quietly
splits = {{name: load_split(file) for name, file in paths.splits.items()}}
print(f"{{len(images_on_disk):,}} JPEGs, {{sum(map(len, captions.values())):,}} captions of "
      f"{{len(captions):,}} images")
print("splits:", {{name: len(names) for name, names in splits.items()}})'''),
    md('''\
## The model and the store

`load_model` picks the device (CUDA, Apple MPS, else CPU) and precision itself. `index_flickr8k`
embeds the images (decoded in worker processes, with a progress bar), then the captions, linked to
their images, and records the train/dev/test splits. Everything is committed in batches, so an
interrupted run keeps its work and the next run resumes.'''),
    code('''\
from clipwidgets.model import load_model
from clipwidgets.datasets.flickr8k import index_flickr8k

encoder = load_model(config.model, config.pretrained)
print(encoder)'''),
    code('''\
summary = index_flickr8k(config.data_dir, config.store_path, encoder)'''),
    code(f'''\
{CHECK}
for key in ("images", "images_indexed", "images_skipped", "captions", "captions_added", "subsets"):
    print(f"{{key:>15}}: {{summary[key]}}")
for issue in summary["issues"]:
    print("note:", issue)'''),
    md('''\
## What was indexed, and what was skipped

Files that cannot be decoded (corrupt, truncated, not an image) are recorded as skipped, with the
reason, and are not retried until they change.'''),
    code(f'''\
{CHECK}
from clipwidgets.store import EmbeddingStore

store = EmbeddingStore.open(config.store_path)
skipped = store.skipped()
# Every JPEG of the data folder is either a row of the store or a recorded skip.
assert store.num_images + len(skipped) == len(images_on_disk), (store.num_images, len(skipped))
assert sorted(store.image_paths()) == sorted(set(images_on_disk) - {{s.path for s in skipped}})
print(f"{{store.num_images:,}} images indexed, {{len(skipped)}} skipped")
for entry in skipped[:10]:
    print(f"  skipped {{entry.path}}: {{entry.reason}}")'''),
    code(f'''\
{CHECK}
for row in range(3):
    print(f"{{store.image_paths()[row]}}\\n    {{store.captions(row)[0]}}")'''),
    md('''\
## The store

A store says what it is: format version, the model that made it (embeddings of two models are
never mixed), the image root, the counts and the named subsets.'''),
    code(f'''\
{CHECK}
info = store.info()
for key in ("format_name", "format_version", "images", "texts", "skipped", "model", "dim", "dtype",
            "subsets"):
    print(f"{{key:>14}}: {{info[key]}}")
assert info["images"] == store.num_images
assert info["texts"] == sum(len(captions.get(path, ())) for path in store.image_paths())'''),
    code('''\
print(f"{info['size_bytes'] / 1e6:.1f} MB at {config.store_path}")
store.close()'''),
    md('''\
Next: [02_search.ipynb](02_search.ipynb) searches this store, [03_analysis.ipynb](03_analysis.ipynb)
measures how well it retrieves.'''),
]

SEARCH = [
    md(f'''\
# 2. Search

{colab_badge("02_search.ipynb")}

Search the store built by [01_generate_embeddings.ipynb](01_generate_embeddings.ipynb) (opened on its
own, this notebook builds it first): with the `SearchPanel`, then from code.

{OFFLINE_NOTE}'''),
    code(COLAB_CELL),
    code(CONFIG_CELL),
    code(OPEN_OR_BUILD_CELL),
    md('''\
## The SearchPanel

Type a description and press Enter. `-words` in the query or the *not* box push results away from
something ("a dog on the beach -water"); each result has a *More like this* button; the panel pages
through results and shows the detail of the image you click. It needs a live kernel: on GitHub's
static view you only see this text.'''),
    code('''\
from clipwidgets.searcher import Searcher
from clipwidgets.widgets import SearchPanel

searcher = Searcher(store, encoder)
panel = SearchPanel(searcher)
panel'''),
    md('''\
The panel can be driven from code too: what it shows is also available as plain text.'''),
    code(f'''\
{CHECK}
panel.search("a dog running on the grass")
assert panel.error is None and len(panel.results) > 0
print(panel.results_text().splitlines()[0])
for hit in panel.results[:5]:
    print(f"{{hit.rank:>2}}  {{hit.score:.3f}}  {{hit.path}}")'''),
    md('''\
## Searching from code

`Searcher.search` returns ranked hits (rank, store row, path, cosine score, the image's captions).'''),
    code(f'''\
{CHECK}
def show(results):
    for hit in results:
        print(f"{{hit.rank:>2}}  {{hit.score:.3f}}  {{hit.path}}")


results = searcher.search("two children playing on the beach", k=5)
scores = [hit.score for hit in results]
assert len(results) == 5 and scores == sorted(scores, reverse=True)
show(results)'''),
    md('''\
A negative prompt subtracts a concept: the same search without water.'''),
    code(f'''\
{CHECK}
without_water = searcher.search("two children playing on the beach", negative="water", k=5)
assert len(without_water) == 5
show(without_water)'''),
    md('''\
"More like this" ranks the images by similarity to one stored image; the image itself comes first
with a score of 1.'''),
    code(f'''\
{CHECK}
first = store.image_paths()[0]
alike = searcher.more_like(first, k=5)
assert alike[0].path == first and alike[0].index == 0
assert abs(alike[0].score - 1.0) < 1e-2
print("like", first)
show(alike)'''),
    code(f'''\
{CHECK}
panel.more_like(0)
assert panel.results[0].path == first
print(panel.results_text().splitlines()[1])'''),
]

ANALYSIS = [
    md(f'''\
# 3. Analysis

{colab_badge("03_analysis.ipynb")}

How well does the model retrieve Flickr8k? Recall@K and ranks on the test split, agreement with
human judgments of caption quality, the distribution of scores, the worst failures, and a map of
the embeddings. Plots use matplotlib. Opened on its own, the notebook first builds the store.

{OFFLINE_NOTE}'''),
    code(COLAB_CELL),
    code(CONFIG_CELL),
    code(OPEN_OR_BUILD_CELL),
    md('''\
## Retrieval

Each test caption searches the test images (text -> image), and each test image searches the test
captions (image -> text). Recall@K is the percentage of queries whose right answer is among the
first K; ranks are 1-based. With the expert annotations of Flickr8K-Expert (in the text archive),
the table also gives Kendall's tau-c between the model's cosine and the human scores. The published
figures for ViT-B/32 with OpenAI's weights are printed for comparison.'''),
    code(f'''\
{CHECK}
from clipwidgets.datasets import load_expert_annotations
from clipwidgets.datasets.flickr8k import flickr8k_paths
from clipwidgets.evaluation import evaluate_store

paths = flickr8k_paths(config.data_dir)
experts = load_expert_annotations(paths.expert, issues=[]) if paths.expert.is_file() else None
report = evaluate_store(store, split="test", expert_annotations=experts)
for direction in (report.text_to_image, report.image_to_text):
    assert all(0.0 <= value <= 100.0 for value in direction.recall.values())
    assert 1.0 <= direction.median_rank <= report.images
print(report.format_table())'''),
    md('''\
## Scores

Cosine scores of each test caption with its own image, against its scores with every other test
image. The further apart the two distributions, the easier retrieval is.'''),
    code(f'''\
{CHECK}
import numpy as np

from clipwidgets.evaluation import split_rows

rows = split_rows(store, "test")
position = {{int(row): i for i, row in enumerate(rows)}}
linked = store.text_image_index()
texts = [t for t in range(store.num_texts) if int(linked[t]) in position]
image_vectors = store.image_embeddings()[rows].astype(np.float32)
text_vectors = store.text_embeddings()[texts].astype(np.float32)
scores = text_vectors @ image_vectors.T
own = np.zeros_like(scores, dtype=bool)
own[np.arange(len(texts)), [position[int(linked[t])] for t in texts]] = True
matching, others = scores[own], scores[~own]
assert matching.size == len(texts) and others.size == scores.size - len(texts)
print(f"{{matching.size}} matching pairs: mean {{matching.mean():.3f}}; "
      f"{{others.size}} other pairs: mean {{others.mean():.3f}}")'''),
    code('''\
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(7, 3.5))
bins = np.linspace(min(scores.min(), 0), scores.max(), 40)
ax.hist(others, bins=bins, density=True, alpha=0.6, label="caption vs other images")
ax.hist(matching, bins=bins, density=True, alpha=0.6, label="caption vs its own image")
ax.set_xlabel("cosine score")
ax.set_ylabel("density")
ax.legend()
plt.show()'''),
    md('''\
## Failures

The captions whose image ranked worst, with the image that should have come first and what came
first instead.'''),
    code(f'''\
{CHECK}
from pathlib import Path

from clipwidgets.evaluation import failures

worst = failures(store, "test", limit=4, k=3)
assert all(failure.ground_truth_rank > 1 for failure in worst)
for failure in worst:
    print(f"rank {{failure.ground_truth_rank:>3}}  {{failure.caption}}")
    print(f"     wanted {{Path(failure.ground_truth).name}} ({{failure.ground_truth_score:.3f}}), "
          f"got {{Path(failure.retrieved[0][0]).name}} ({{failure.retrieved[0][1]:.3f}})")'''),
    code('''\
from clipwidgets.images import load_image

if worst:
    fig, axes = plt.subplots(len(worst), 2, figsize=(6, 2.6 * len(worst)), squeeze=False)
    for (wanted_ax, got_ax), failure in zip(axes, worst):
        wanted_ax.imshow(load_image(failure.ground_truth))
        wanted_ax.set_title(f"wanted (rank {failure.ground_truth_rank})", fontsize=9)
        got_ax.imshow(load_image(failure.retrieved[0][0]))
        got_ax.set_title("retrieved first", fontsize=9)
        wanted_ax.set_ylabel(failure.caption[:40], fontsize=8)
        for ax in (wanted_ax, got_ax):
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    plt.show()'''),
    md('''\
## A map of the embeddings

The image embeddings projected to two dimensions with PCA (plain numpy), coloured by split. UMAP
draws a better map when the `umap-learn` package is installed; it is not required.'''),
    code(f'''\
{CHECK}
vectors = store.image_embeddings().astype(np.float32)
centred = vectors - vectors.mean(axis=0)
_, singular, components = np.linalg.svd(centred, full_matrices=False)
xy = centred @ components[:2].T
explained = singular**2 / np.sum(singular**2)
assert xy.shape == (store.num_images, 2) and 0.0 < explained[:2].sum() <= 1.0
print(f"PCA: the first two components explain {{100 * explained[:2].sum():.0f}}% of the variance")'''),
    code('''\
try:
    import umap  # optional
except ImportError:
    umap = None
if umap is not None:
    xy = umap.UMAP(n_components=2, metric="cosine", random_state=0).fit_transform(vectors)

split_of = np.full(store.num_images, "none", dtype=object)
for name, members in store.subsets().items():
    split_of[members] = name
fig, ax = plt.subplots(figsize=(6, 5))
for name in ("train", "dev", "test", "none"):
    chosen = split_of == name
    if chosen.any():
        ax.scatter(xy[chosen, 0], xy[chosen, 1], s=6, alpha=0.6, label=name)
ax.set_title(f"{store.num_images:,} images, {'UMAP' if umap is not None else 'PCA'}")
ax.legend(markerscale=3)
plt.show()'''),
]

NOTEBOOKS = {
    "01_generate_embeddings.ipynb": GENERATE,
    "02_search.ipynb": SEARCH,
    "03_analysis.ipynb": ANALYSIS,
}


def notebook_metadata() -> dict:
    """Kernel and language only (no Python version, no widget state), so that reruns diff cleanly."""
    return {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }


def build(name: str, cells: list[nbformat.NotebookNode]) -> nbformat.NotebookNode:
    """A notebook with stable cell ids (so that rebuilding it changes nothing that did not change)."""
    notebook = nbformat.v4.new_notebook()
    notebook.metadata = notebook_metadata()
    stem = name.split("_")[0]
    notebook.cells = [nbformat.from_dict(dict(cell, id=f"nb{stem}-{i:02d}")) for i, cell in enumerate(cells)]
    return notebook


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
    parser.add_argument("--execute", action="store_true",
                        help="run each notebook in the offline mode set by scripts/test-notebooks.sh")
    args = parser.parse_args(argv)
    volatile = []
    if args.execute:
        data = os.environ.get("CLIPWIDGETS_DATA", "")
        if os.environ.get("CLIPWIDGETS_MODEL") != "tiny" or not data:
            raise SystemExit("--execute runs in the offline CI mode only: use "
                             "`bash scripts/test-notebooks.sh --update`.")
        volatile = [str(Path(data).parent), str(ROOT)]
    for name, cells in NOTEBOOKS.items():
        notebook = build(name, cells)
        if args.execute:
            print(f"running {name}", file=sys.stderr, flush=True)
            execute(notebook)
            keep_small_outputs(notebook, volatile)
        nbformat.validate(notebook)
        nbformat.write(notebook, NOTEBOOK_DIR / name)
        print(f"wrote NoteBooks/{name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
