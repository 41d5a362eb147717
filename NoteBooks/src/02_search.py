# %% [markdown]
# # 2. Search
#
# [![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/clipwidgets/clipwidgets/blob/main/NoteBooks/02_search.ipynb)
#
# Search the store built by [01_generate_embeddings.ipynb](01_generate_embeddings.ipynb) (opened on its
# own, this notebook builds it first): with the `SearchPanel`, then from code.
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
# ## The SearchPanel
#
# Type a description and press Enter. `-words` in the query or the *not* box push results away from
# something ("a dog on the beach -water"); each result has a *More like this* button; the panel pages
# through results and shows the detail of the image you click. It needs a live kernel: on GitHub's
# static view you only see this text.

# %%
from clipwidgets.searcher import Searcher
from clipwidgets.widgets import SearchPanel

searcher = Searcher(store, encoder)
panel = SearchPanel(searcher)
panel

# %% [markdown]
# The panel can be driven from code too: what it shows is also available as plain text.

# %%
# NBVAL_CHECK_OUTPUT
panel.search("a dog running on the grass")
assert panel.error is None and len(panel.results) > 0
print(panel.results_text().splitlines()[0])
for hit in panel.results[:5]:
    print(f"{hit.rank:>2}  {hit.score:.3f}  {hit.path}")


# %% [markdown]
# ## Searching from code
#
# `Searcher.search` returns ranked hits (rank, store row, path, cosine score, the image's captions).

# %%
# NBVAL_CHECK_OUTPUT
def show(results):
    for hit in results:
        print(f"{hit.rank:>2}  {hit.score:.3f}  {hit.path}")


results = searcher.search("two children playing on the beach", k=5)
scores = [hit.score for hit in results]
assert len(results) == 5 and scores == sorted(scores, reverse=True)
show(results)

# %% [markdown]
# A negative prompt subtracts a concept: the same search without water.

# %%
# NBVAL_CHECK_OUTPUT
without_water = searcher.search("two children playing on the beach", negative="water", k=5)
assert len(without_water) == 5
show(without_water)

# %% [markdown]
# "More like this" ranks the images by similarity to one stored image; the image itself comes first
# with a score of 1.

# %%
# NBVAL_CHECK_OUTPUT
first = store.image_paths()[0]
alike = searcher.more_like(first, k=5)
assert alike[0].path == first and alike[0].index == 0
assert abs(alike[0].score - 1.0) < 1e-2
print("like", first)
show(alike)

# %%
# NBVAL_CHECK_OUTPUT
panel.more_like(0)
assert panel.results[0].path == first
print(panel.results_text().splitlines()[1])
