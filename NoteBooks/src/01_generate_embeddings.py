# %% [markdown]
# # 1. Generate embeddings
#
# [![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/clipwidgets/clipwidgets/blob/main/NoteBooks/01_generate_embeddings.ipynb)
#
# Fetch the images (Flickr8k by default: 8,091 photos with five captions each), embed them with CLIP
# and keep the vectors in an HDF5 store that the search and analysis notebooks read. Running it again
# only embeds what changed: new or edited images, and captions not stored yet.
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

# %% [markdown]
# ## The data
#
# `ensure_flickr8k` leaves a complete Flickr8k folder alone and otherwise downloads the two archives
# (about 1 GB; an interrupted download resumes), checks them and extracts them into the data folder.

# %%
from clipwidgets.datasets import load_captions, load_split
from clipwidgets.datasets.flickr8k import flickr8k_paths
from clipwidgets.notebook_env import ensure_flickr8k

status = ensure_flickr8k(config)
paths = flickr8k_paths(config.data_dir)
print(f"Flickr8k in {config.data_dir}: {status}")

# %%
# NBVAL_CHECK_OUTPUT
images_on_disk = sorted(p.name for p in paths.images.iterdir() if p.suffix.lower() == ".jpg")
captions = load_captions(paths.token, issues=[])  # issues=[]: the known bad lines are dropped quietly
splits = {name: load_split(file) for name, file in paths.splits.items()}
print(f"{len(images_on_disk):,} JPEGs, {sum(map(len, captions.values())):,} captions of "
      f"{len(captions):,} images")
print("splits:", {name: len(names) for name, names in splits.items()})

# %% [markdown]
# ## The model and the store
#
# `config.load_encoder()` loads the model the settings name, on the device it picks (CUDA, Apple MPS,
# else CPU) at the precision it picks. `index_flickr8k` embeds the images (decoded in worker processes,
# with a progress bar), then the captions, linked to their images, and records the train/dev/test
# splits. Everything is committed in batches, so an interrupted run keeps its work and the next run
# resumes.

# %%
from clipwidgets.datasets.flickr8k import index_flickr8k

encoder = config.load_encoder()
print(encoder)

# %%
summary = index_flickr8k(config.data_dir, config.store_path, encoder)

# %%
# NBVAL_CHECK_OUTPUT
for key in ("images", "images_indexed", "images_skipped", "captions", "captions_added", "subsets"):
    print(f"{key:>15}: {summary[key]}")
for issue in summary["issues"]:
    print("note:", issue)

# %% [markdown]
# ## What was indexed, and what was skipped
#
# Files that cannot be decoded (corrupt, truncated, not an image) are recorded as skipped, with the
# reason, and are not retried until they change.

# %%
# NBVAL_CHECK_OUTPUT
from clipwidgets.store import EmbeddingStore

store = EmbeddingStore.open(config.store_path)
skipped = store.skipped()
# Every JPEG of the data folder is either a row of the store or a recorded skip.
assert store.num_images + len(skipped) == len(images_on_disk), (store.num_images, len(skipped))
assert sorted(store.image_paths()) == sorted(set(images_on_disk) - {s.path for s in skipped})
print(f"{store.num_images:,} images indexed, {len(skipped)} skipped")
for entry in skipped[:10]:
    print(f"  skipped {entry.path}: {entry.reason}")

# %%
# NBVAL_CHECK_OUTPUT
for row in range(3):
    print(f"{store.image_paths()[row]}\n    {store.captions(row)[0]}")

# %% [markdown]
# ## The store
#
# A store says what it is: format version, the model that made it (embeddings of two models are
# never mixed), the image root, the counts and the named subsets.

# %%
# NBVAL_CHECK_OUTPUT
info = store.info()
for key in ("format_name", "format_version", "images", "texts", "skipped", "model", "dim", "dtype",
            "subsets"):
    print(f"{key:>14}: {info[key]}")
assert info["images"] == store.num_images
assert info["texts"] == sum(len(captions.get(path, ())) for path in store.image_paths())

# %%
print(f"{info['size_bytes'] / 1e6:.1f} MB at {config.store_path}")
store.close()

# %% [markdown]
# Next: [02_search.ipynb](02_search.ipynb) searches this store, [03_analysis.ipynb](03_analysis.ipynb)
# measures how well it retrieves.
