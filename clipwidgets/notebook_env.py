"""Where the notebooks find things: repository root, data folder, store file, model, Colab or not.

Paths are resolved from the repository (found from this package's location, else by walking up
from the working directory), never from the kernel's working directory alone, so a notebook opened
from `NoteBooks/`, from the repository root or by `pytest --nbval` sees the same files. Environment
variables override the defaults:

    CLIPWIDGETS_MODEL       open_clip model name, or "tiny", the offline test model
                            (default ViT-B-32-quickgelu)
    CLIPWIDGETS_PRETRAINED  pretrained tag or checkpoint file (default openai; ignored for "tiny")
    CLIPWIDGETS_DATA        the Flickr8k folder: Images/, Flickr8k.token.txt, the split files
                            (default <repo>/Data)
    CLIPWIDGETS_STORE       the HDF5 store the notebooks write and read (default <repo>/store/flickr8k.h5)

Relative paths in these variables are taken relative to the repository root.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .model_choice import choose_model, encoder_for
from .settings import DEFAULT_DATA, DEFAULT_STORE, ENV_DATA, ENV_MODEL, ENV_PRETRAINED, ENV_STORE, TINY_MODEL

if TYPE_CHECKING:
    from .model import Encoder
    from .types import PixelEncoder

__all__ = [
    "NotebookConfig",
    "ensure_flickr8k",
    "ensure_store",
    "find_repo_root",
    "in_colab",
    "is_repo_root",
    "notebook_config",
]

_PACKAGE_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class NotebookConfig:
    """Everything a notebook needs to know about its surroundings."""

    repo_root: Path
    data_dir: Path
    store_path: Path
    model: str
    pretrained: str | None
    colab: bool

    @property
    def images_dir(self) -> Path:
        """The folder of images to index (`<data_dir>/Images`, the Flickr8k layout)."""
        return self.data_dir / "Images"

    @property
    def tiny(self) -> bool:
        """True for the offline test model, whose results carry no meaning."""
        return self.model == TINY_MODEL

    def load_encoder(self, *, device: str = "auto", precision: str = "auto") -> Encoder:
        """Load the model these settings name (`clipwidgets.model_choice.encoder_for`)."""
        return encoder_for(None, self.model, self.pretrained, device=device, precision=precision)

    def describe(self) -> str:
        """One line per setting, with paths shown relative to the repository root when inside it."""
        weights = "random weights, offline test model" if self.tiny else self.pretrained
        return "\n".join([
            f"model:  {self.model} ({weights})",
            f"data:   {self._shown(self.data_dir)}",
            f"store:  {self._shown(self.store_path)}",
            f"colab:  {self.colab}",
        ])

    def _shown(self, path: Path) -> str:
        try:
            return path.relative_to(self.repo_root).as_posix()
        except ValueError:
            return str(path)


def in_colab() -> bool:
    """True when running inside Google Colab."""
    return "google.colab" in sys.modules


def is_repo_root(folder: Path) -> bool:
    """True for a clipwidgets checkout: it holds pyproject.toml, the package and NoteBooks/."""
    return ((folder / "pyproject.toml").is_file() and (folder / "clipwidgets" / "__init__.py").is_file()
            and (folder / "NoteBooks").is_dir())


def find_repo_root(*, package_dir: Path = _PACKAGE_DIR, cwd: Path | None = None) -> Path:
    """The checkout this package lives in; else the first checkout above `cwd`; else `cwd` itself.

    The last case is an installed package outside a checkout (Colab, pip install from git):
    data and store then go below the working directory.
    """
    if is_repo_root(package_dir.parent):
        return package_dir.parent
    cwd = (cwd or Path.cwd()).resolve()
    for folder in (cwd, *cwd.parents):
        if is_repo_root(folder):
            return folder
    return cwd


def notebook_config(environ: Mapping[str, str] | None = None, *,
                    repo_root: Path | None = None) -> NotebookConfig:
    """Read the settings from `environ` (default `os.environ`) with the defaults described above."""
    environ = os.environ if environ is None else environ
    root = repo_root if repo_root is not None else find_repo_root()
    model, pretrained = choose_model(None, _setting(environ, ENV_MODEL), _setting(environ, ENV_PRETRAINED))
    return NotebookConfig(
        repo_root=root,
        data_dir=_path(root, _setting(environ, ENV_DATA) or str(DEFAULT_DATA)),
        store_path=_path(root, _setting(environ, ENV_STORE) or str(DEFAULT_STORE)),
        model=model,
        pretrained=pretrained,
        colab=in_colab(),
    )


def ensure_flickr8k(config: NotebookConfig, *, progress: bool = True) -> str:
    """Leave a complete Flickr8k-shaped folder alone, else download Flickr8k into it; returns what happened.

    "present" when `config.data_dir` already holds Images/, the token file and the split files with
    every captioned image (the real dataset, or the generated look-alike used offline); otherwise the
    status of `download_flickr8k` ("downloaded", or "present" when its manifest matches), which
    resumes an interrupted download and raises DatasetError, with the URLs, when offline.
    """
    from .datasets.flickr8k import download_flickr8k, flickr8k_paths, layout_problems

    if not layout_problems(flickr8k_paths(config.data_dir), expected_images=None):
        return "present"
    return str(download_flickr8k(config.data_dir, progress=progress)["status"])


def ensure_store(config: NotebookConfig, encoder: PixelEncoder, *,
                 progress: bool = True) -> dict[str, Any] | None:
    """Build the store from Flickr8k when `config.store_path` does not exist yet (fetching the data
    first if needed); returns `index_flickr8k`'s summary, or None when the store was already there.
    The build itself is `clipwidgets.bootstrap`'s, the one the app uses."""
    from .bootstrap import build_store

    if config.store_path.is_file():
        return None
    ensure_flickr8k(config, progress=progress)
    return build_store(config.store_path, encoder, config.images_dir, progress=progress)


def _setting(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name, "").strip()
    return value or None


def _path(root: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else root / path
