"""`clipwidgets app`: one server process for a whole team, on 127.0.0.1:7860 by default.

`run_app()` loads the model once, opens the store read-only for every session, and serves the
SearchPanel with `clipwidgets.app.server.AppServer`. When the store is missing it is built in the
background (`clipwidgets.bootstrap.BackgroundBuild`): the page is served as soon as the first
images are committed, and results grow while the rest is indexed.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

from .app.config import AppConfig, is_loopback, make_token
from .errors import StoreError
from .settings import DEFAULT_IMAGES

__all__ = ["FIRST_COMMIT_TIMEOUT_S", "load_app_encoder", "run_app", "with_token"]

FIRST_COMMIT_TIMEOUT_S = 600.0


def load_app_encoder(store: str | os.PathLike[str], *, model: str | None = None,
                     pretrained: str | None = None) -> Any:
    """The model for `store` by the one rule of `model_choice` (a store that does not exist yet has
    no model of its own)."""
    from .model_choice import encoder_for
    from .store import read_model_meta

    return encoder_for(read_model_meta(store) if Path(store).is_file() else None, model, pretrained)


def run_app(store: str | os.PathLike[str], config: AppConfig, *,
            images_dir: str | os.PathLike[str] = DEFAULT_IMAGES, model: str | None = None,
            pretrained: str | None = None, allow_download: bool = False) -> int:
    """Serve the app until SIGINT/SIGTERM; returns the exit status.

    Binds the port first (so "port in use" fails at once), then loads the model, builds the store in
    the background when it is missing, and prints `clipwidgets app: open URL` once serving. On a
    non-loopback address without a token, a token is generated and printed with the URL.
    """
    from .app.server import AppServer, bind_socket
    from .app.shared import SharedSearch
    from .bootstrap import BackgroundBuild, ensure_images, unindexed

    config = with_token(config)
    sock = bind_socket(config.host, config.port)
    try:
        store = Path(store)
        build = None
        missing = not store.is_file()
        if missing:
            images_dir = ensure_images(store, images_dir, allow_download=allow_download)
        left = 0 if missing else unindexed(store, images_dir)  # a build stopped half-way resumes
        encoder = load_app_encoder(store, model=model, pretrained=pretrained)
        if missing or left:
            build = BackgroundBuild(store, encoder, images_dir).start()
            what = "No store" if missing else f"{left:,} images not indexed yet"
            print(f"{what} at {store}: indexing the {build.total:,} images in {images_dir} in the "
                  "background; the page opens as soon as the first ones are stored.", flush=True)
            if not build.wait_first_commit(FIRST_COMMIT_TIMEOUT_S):
                why = f": {build.error}" if build.error else f" within {FIRST_COMMIT_TIMEOUT_S:.0f} s"
                raise StoreError(f"Indexing {images_dir} stored no image{why}. Check that the folder "
                                 "holds readable images.")
        shared = SharedSearch(store, encoder, build=build)
        try:
            server = AppServer(shared, config, sock=sock)
        except BaseException:
            shared.close()
            raise
    except BaseException:
        sock.close()
        raise
    restore = _stop_on_sigterm(server)
    try:
        server.run(on_ready=lambda url: _announce(url, config))
    except KeyboardInterrupt:
        pass
    finally:
        restore()
        shared.close()
    return 0


def with_token(config: AppConfig) -> AppConfig:
    """`config`, with a new token when it binds a non-loopback address without one."""
    if config.token is not None or is_loopback(config.host):
        return config
    from dataclasses import replace

    return replace(config, token=make_token())


def _announce(url: str, config: AppConfig) -> None:
    print(f"clipwidgets app: open {url}  (Ctrl+C stops it)", flush=True)
    if not is_loopback(config.host):
        print(f"  reachable from the network on {config.host}:{config.port}; the token in the address is "
              "required (give your own with --token). Host names accepted: "
              f"{', '.join(sorted(config.allowed_hosts()))} (add more with --allow-host).", flush=True)


def _stop_on_sigterm(server: Any) -> Any:
    """SIGTERM stops the server like Ctrl+C (uvicorn also catches it while serving); returns the undo."""
    if sys.platform == "win32":
        return lambda: None
    try:
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: server.stop())
    except ValueError:  # not the main thread: the caller handles signals
        return lambda: None
    return lambda: signal.signal(signal.SIGTERM, previous)

