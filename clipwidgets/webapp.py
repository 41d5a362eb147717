"""The standalone app: the SearchPanel served as a web page by Voila, on 127.0.0.1:7860 by default.

`serve()` starts Voila on the notebook `app/search_app.ipynb`, which calls `panel_from_env()`.
The store and model travel to the kernel in environment variables, never through URLs. Voila's
file route is switched off, so the page can show only what the panel sends: thumbnails of images
inside the store's image root.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ClipWidgetsError, InvalidInputError, StoreError
from .settings import DEFAULT_HOST, DEFAULT_IMAGES, DEFAULT_PORT, ENV_MODEL, ENV_PRETRAINED, ENV_STORE

if TYPE_CHECKING:
    from .widgets import SearchPanel

__all__ = [
    "APP_NOTEBOOK", "app_environment", "app_url", "ensure_store", "panel_from_env", "serve", "voila_command"
]

APP_NOTEBOOK = Path(__file__).parent / "app" / "search_app.ipynb"


def voila_command(*, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> list[str]:
    """The command that serves the app notebook with Voila, every static-file route closed."""
    return [
        sys.executable, "-m", "voila", str(APP_NOTEBOOK),
        f"--port={port}", f"--Voila.ip={host}", "--Voila.port_retries=0", "--no-browser", "--theme=light",
        # /voila/files/ would serve files next to the notebook: deny every path.
        "--VoilaConfiguration.file_denylist", ".*",
        "--VoilaConfiguration.show_tracebacks=False",
        # One kernel waits with the panel already built (model loaded): a new tab shows it in ~2 s
        # instead of ~10 s; it costs one idle kernel's memory.
        "--VoilaConfiguration.preheat_kernel=True", "--VoilaConfiguration.default_pool_size=1",
    ]


def app_environment(store: str | os.PathLike[str], *, model: str | None = None,
                    pretrained: str | None = None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for the Voila process: the store's absolute path and the optional model choice."""
    env = dict(os.environ if base is None else base)
    env[ENV_STORE] = str(Path(store).resolve())
    env[ENV_MODEL] = model or ""
    env[ENV_PRETRAINED] = pretrained or ""
    return env


def serve(store: str | os.PathLike[str], *, model: str | None = None, pretrained: str | None = None,
          host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, ready_timeout: float = 120.0) -> int:
    """Run the app until interrupted; prints its URL once the server accepts connections."""
    if not 0 < port < 65536:
        raise InvalidInputError(f"Port {port} is out of range: use a number from 1 to 65535, e.g. 7860.")
    if not Path(store).is_file():
        raise StoreError(f"Store {str(store)!r} does not exist. Build it with `clipwidgets index` "
                         "or run `clipwidgets app` without --store to build the default one.")
    if _port_in_use(host, port):
        raise InvalidInputError(f"Port {port} on {host} is already in use: stop the other server "
                                "or pick another port with --port.")
    process = subprocess.Popen(voila_command(host=host, port=port),
                               env=app_environment(store, model=model, pretrained=pretrained))
    restore_sigterm = _stop_on_sigterm()
    try:
        if not _wait_until_listening(process, host, port, ready_timeout):
            raise ClipWidgetsError(f"Voila did not start on {host}:{port} within {ready_timeout:.0f} s "
                                   f"(exit status {process.poll()}); see its messages above.")
        print(f"clipwidgets app: open {app_url(host, port)}  (Ctrl+C stops it)", flush=True)
        return process.wait()
    except (KeyboardInterrupt, _Stop):
        return 0
    finally:
        _stop(process)
        restore_sigterm()


def app_url(host: str, port: int) -> str:
    """The address to open in a browser."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/"


def panel_from_env(environ: Mapping[str, str] | None = None) -> SearchPanel:
    """The SearchPanel the app notebook shows, built from the variables `serve()` sets.

    Never raises: a missing store or a model that cannot load is shown in the panel.
    """
    from .model_choice import encoder_for
    from .store import EmbeddingStore
    from .widgets import SearchPanel

    env = os.environ if environ is None else environ
    store_path = env.get(ENV_STORE, "")
    try:
        if not store_path:
            raise StoreError(f"No store given: start the app with `clipwidgets app --store PATH` "
                             f"(the {ENV_STORE} variable is empty).")
        store = EmbeddingStore.open(store_path)
    except (ClipWidgetsError, OSError) as error:
        panel = SearchPanel(None)
        panel.show_error(error)
        return panel
    try:
        encoder = encoder_for(store.model_meta, env.get(ENV_MODEL) or None, env.get(ENV_PRETRAINED) or None)
    except ClipWidgetsError as error:
        panel = SearchPanel(store)
        panel.show_error(f"Text search is unavailable: {error}")
        return panel
    return SearchPanel(store, encoder)


def ensure_store(store: str | os.PathLike[str], *, images_dir: str | os.PathLike[str] = DEFAULT_IMAGES,
                 model: str | None = None, pretrained: str | None = None,
                 allow_download: bool = False) -> Path:
    """Return `store`, first building it (with progress bars) when it is missing.

    Builds from the images in `images_dir`, with their captions when the folder above holds
    Flickr8k's caption file; with no images and `allow_download`, Flickr8k is downloaded into the
    folder above `images_dir` first. The model is `model` (default ViT-B-32-quickgelu/openai).
    """
    store = Path(store)
    if store.exists():
        return store
    from .datasets.flickr8k import TOKEN_FILE, download_flickr8k, index_flickr8k
    from .model_choice import encoder_for

    images_dir = Path(images_dir)
    data_dir = images_dir.parent
    flickr8k_layout = images_dir.name == "Images"
    has_images = _has_images(images_dir)
    if not has_images and not (allow_download and flickr8k_layout):
        raise StoreError(f"Store {str(store)!r} does not exist and {str(images_dir)!r} holds no images. "
                         "Put images there (or pass --images DIR) and run the command again, "
                         "or build a store with `clipwidgets index`.")
    encoder = encoder_for(None, model, pretrained)
    store.parent.mkdir(parents=True, exist_ok=True)
    if not has_images:
        print(f"No store at {store} and no images in {images_dir}: downloading Flickr8k into "
              f"{data_dir} (first run only).", flush=True)
        download_flickr8k(data_dir)
    print(f"No store at {store}: indexing the images in {images_dir} (first run only).", flush=True)
    if flickr8k_layout and (data_dir / TOKEN_FILE).is_file():
        index_flickr8k(data_dir, store, encoder)
    else:
        from .indexing import index_images

        index_images(images_dir, store, encoder, progress=True)
    return store


class _Stop(Exception):
    """Raised in the main thread when the app receives SIGTERM."""


def _stop_on_sigterm() -> Callable[[], object]:
    """Turn SIGTERM into `_Stop` (so that Voila and its kernels are stopped too); returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum: int, frame: object) -> None:
        raise _Stop()

    previous = signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)


def _stop(process: subprocess.Popen, timeout: float = 30.0) -> None:
    """Ask Voila to stop (it shuts its kernels down), and kill it if it has not within `timeout`."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _has_images(folder: Path) -> bool:
    if not folder.is_dir():
        return False
    from .images import IMAGE_EXTENSIONS

    return any(path.suffix.lower() in IMAGE_EXTENSIONS for path in folder.rglob("*"))


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.settimeout(1.0)
        return probe.connect_ex((host, port)) == 0


def _wait_until_listening(process: subprocess.Popen, host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    probe_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if _port_in_use(probe_host, port):
            return True
        time.sleep(0.25)
    return False
