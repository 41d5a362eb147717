# %% [markdown]
# # 3. Analysis
#
# [![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/clipwidgets/clipwidgets/blob/main/NoteBooks/03_analysis.ipynb)
#
# How well does the model retrieve Flickr8k? Recall@K and ranks on the test split, agreement with
# human judgments of caption quality, the distribution of scores, the worst failures, and a map of
# the embeddings. Plots use matplotlib. Opened on its own, the notebook first builds the store.
#
# **Where things are.** Paths come from the repository, not from the folder the kernel starts in, and
# these environment variables override them: `CLIPWIDGETS_MODEL` (default `ViT-B-32-quickgelu`;
# `tiny` is the offline test model with random weights), `CLIPWIDGETS_PRETRAINED` (default `openai`),
# `CLIPWIDGETS_DATA` (default `Data/`) and `CLIPWIDGETS_STORE` (default `store/flickr8k.h5`).
# CI runs this notebook offline with `tiny` on generated images, and the outputs saved in the file
# come from that run: with the real model your numbers and file names will differ.

# %%
# In Google Colab: install clipwidgets from GitHub. Colab's own torch, torchvision and ipywidgets are
# kept (--no-deps, then only the packages Colab lacks). Anywhere else this cell does nothing.
import subprocess
import sys

REPOSITORY = "https://github.com/clipwidgets/clipwidgets"  # the repository these notebooks come from
if "google.colab" in sys.modules:
    pip = [sys.executable, "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "--no-deps", f"clipwidgets @ git+{REPOSITORY}"], check=True)
    subprocess.run([*pip, "open_clip_torch>=2.24", "h5py>=3.8", "tqdm>=4.60"], check=True)
    from google.colab import output

    output.enable_custom_widget_manager()

# %%
from clipwidgets.notebook_env import notebook_config

config = notebook_config()
print(config.describe())

# %%
from clipwidgets.notebook_env import ensure_store
from clipwidgets.store import EmbeddingStore

encoder = config.load_encoder()
# Opened on its own (without 01 first), the notebook builds the store: Flickr8k download and indexing.
ensure_store(config, encoder)
store = EmbeddingStore.open(config.store_path)
print(store)

# %% [markdown]
# ## Retrieval
#
# Each test caption searches the test images (text -> image), and each test image searches the test
# captions (image -> text). Recall@K is the percentage of queries whose right answer is among the
# first K; ranks are 1-based. With the expert annotations of Flickr8K-Expert (in the text archive),
# the table also gives Kendall's tau-c between the model's cosine and the human scores. The published
# figures for ViT-B/32 with OpenAI's weights are printed for comparison.

# %%
# NBVAL_CHECK_OUTPUT
from clipwidgets.datasets import load_expert_annotations
from clipwidgets.datasets.flickr8k import flickr8k_paths
from clipwidgets.evaluation import evaluate_store

paths = flickr8k_paths(config.data_dir)
experts = load_expert_annotations(paths.expert, issues=[]) if paths.expert.is_file() else None
report = evaluate_store(store, split="test", expert_annotations=experts)
for direction in (report.text_to_image, report.image_to_text):
    assert all(0.0 <= value <= 100.0 for value in direction.recall.values())
    assert 1.0 <= direction.median_rank <= report.images
print(report.format_table())

# %% [markdown]
# ## Scores
#
# Cosine scores of each test caption with its own image, against its scores with every other test
# image. The further apart the two distributions, the easier retrieval is.

# %%
# NBVAL_CHECK_OUTPUT
import numpy as np

from clipwidgets.evaluation import split_rows

rows = split_rows(store, "test")
position = {int(row): i for i, row in enumerate(rows)}
linked = store.text_image_index()
texts = [t for t in range(store.num_texts) if int(linked[t]) in position]
image_vectors = store.image_embeddings()[rows].astype(np.float32)
text_vectors = store.text_embeddings()[texts].astype(np.float32)
scores = text_vectors @ image_vectors.T
own = np.zeros_like(scores, dtype=bool)
own[np.arange(len(texts)), [position[int(linked[t])] for t in texts]] = True
matching, others = scores[own], scores[~own]
assert matching.size == len(texts) and others.size == scores.size - len(texts)
print(f"{matching.size} matching pairs: mean {matching.mean():.3f}; "
      f"{others.size} other pairs: mean {others.mean():.3f}")

# %%
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(7, 3.5))
bins = np.linspace(min(scores.min(), 0), scores.max(), 40)
ax.hist(others, bins=bins, density=True, alpha=0.6, label="caption vs other images")
ax.hist(matching, bins=bins, density=True, alpha=0.6, label="caption vs its own image")
ax.set_xlabel("cosine score")
ax.set_ylabel("density")
ax.legend()
plt.show()

# %% [markdown]
# ## Failures
#
# The captions whose image ranked worst, with the image that should have come first and what came
# first instead.

# %%
# NBVAL_CHECK_OUTPUT
from pathlib import Path

from clipwidgets.evaluation import failures

worst = failures(store, "test", limit=4, k=3)
assert all(failure.ground_truth_rank > 1 for failure in worst)
for failure in worst:
    print(f"rank {failure.ground_truth_rank:>3}  {failure.caption}")
    print(f"     wanted {Path(failure.ground_truth).name} ({failure.ground_truth_score:.3f}), "
          f"got {Path(failure.retrieved[0][0]).name} ({failure.retrieved[0][1]:.3f})")

# %%
from clipwidgets.images import load_image

if worst:
    fig, axes = plt.subplots(len(worst), 2, figsize=(6, 2.6 * len(worst)), squeeze=False)
    for (wanted_ax, got_ax), failure in zip(axes, worst, strict=True):
        wanted_ax.imshow(load_image(failure.ground_truth))
        wanted_ax.set_title(f"wanted (rank {failure.ground_truth_rank})", fontsize=9)
        got_ax.imshow(load_image(failure.retrieved[0][0]))
        got_ax.set_title("retrieved first", fontsize=9)
        wanted_ax.set_ylabel(failure.caption[:40], fontsize=8)
        for ax in (wanted_ax, got_ax):
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    plt.show()

# %% [markdown]
# ## A map of the embeddings
#
# The image embeddings projected to two dimensions with PCA (plain numpy), coloured by split. UMAP
# draws a better map when the `umap-learn` package is installed; it is not required.

# %%
# NBVAL_CHECK_OUTPUT
vectors = store.image_embeddings().astype(np.float32)
centred = vectors - vectors.mean(axis=0)
_, singular, components = np.linalg.svd(centred, full_matrices=False)
xy = centred @ components[:2].T
explained = singular**2 / np.sum(singular**2)
assert xy.shape == (store.num_images, 2) and 0.0 < explained[:2].sum() <= 1.0
print(f"PCA: the first two components explain {100 * explained[:2].sum():.0f}% of the variance")

# %%
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
plt.show()

# %% [markdown]
# ## Exploring the collection
#
# The panel does more than rank: mark results **more** / **fewer** and refine (Rocchio relevance
# feedback), ask **why this result?**, draw the collection as a map linked to the panel, review
# near-duplicates and filter by zero-shot labels. Each is also a plain function; see `docs/explore.md`.

# %%
from clipwidgets import SearchPanel

panel = SearchPanel(store, encoder)
panel.search("a dog running on the beach")
shown = [hit.index for hit in panel.results]
# Two results are what we wanted, the first is not: rank again with those marks.
panel.feedback(positive=[shown[2], shown[5]], negative=[shown[0]])
refined = [hit.index for hit in panel.results]
assert refined[0] != shown[0] or refined != shown, "feedback changed nothing"
panel.undo_mark()  # one step back: the original ranking
assert [hit.index for hit in panel.results] == shown
panel

# %%
# Why does the first result rank first? The image score, the best caption, each query part's share of
# the score, and an occlusion heat map of the regions that match (drawn in the panel's detail view).
# A result knows the query (and feedback marks) that produced it.
found = panel.searcher.explain(panel.results[0])
assert abs(sum(part.contribution for part in found.parts) - found.image_score) < 1e-4
print(found.to_text())

# %%
# The map: every image of the store in 2-D (PCA; method="umap" with umap-learn), coloured by split.
# The panel's results are drawn large; a lasso or box selection (toolbar) shows those images in the panel.
from clipwidgets import EmbeddingMap

embedding_map = EmbeddingMap(panel, color_by="split")
embedding_map

# %%
# Near-duplicates: groups of images whose embeddings are almost the same (cosine >= threshold).
from clipwidgets import DuplicateReview, find_duplicates

groups = find_duplicates(store, 0.95)
print(f"{len(groups)} groups of near-duplicates at cosine >= 0.95")
DuplicateReview(store, groups) if groups else None

# %%
# Zero-shot labels: each image's closest label, and a label filter in the panel.
labels = panel.searcher.classify(["dog", "cat", "beach", "snow", "people"])
counts = labels.counts()
assert sum(counts.values()) == store.num_images
print(counts)
panel.set_labels(labels)
panel.filter_label("dog")
assert all(labels.label_of(hit.index) == "dog" for hit in panel.results)
