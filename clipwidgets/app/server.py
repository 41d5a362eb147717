"""The app server: Solara's widget server, behind the Guard, run by uvicorn inside this process.

One process serves every session: Solara gives each browser session a virtual kernel (a widget
namespace, no Python process), and `clipwidgets.app.page.Page` builds that session's SearchPanel
over the shared searcher. Nothing is started as a child process, so the server cannot outlive
`clipwidgets app`, whatever signal ends it. Solara's settings are fixed here, before its import:
production mode, no telemetry, front-end assets only from the installed solara-assets package.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ClipWidgetsError, InvalidInputError
from .config import AppConfig
from .shared import SharedSearch

__all__ = ["AppServer", "app_url", "bind_socket", "configure_solara"]

_log = logging.getLogger(__name__)
_SOLARA_ENV = {
    "SOLARA_MODE": "production",
    "SOLARA_TELEMETRY_MIXPANEL_ENABLE": "False",
    "SOLARA_ASSETS_PROXY": "True",  # serve the front end from the local solara-assets files
    "SOLARA_THEME_SHOW_BANNER": "False",
    "SOLARA_THEME_TITLE": "clipwidgets",
    "SOLARA_THEME_LOADER": "plain",
    "SOLARA_SERVER_HTTP_GZIP": "True",
    "SOLARA_SERVER_SYNC_WS_WRITE": "True",
}


def configure_solara(config: AppConfig) -> Path:
    """Set Solara's settings for this app (before its server modules load); returns the assets folder."""
    for name, value in _SOLARA_ENV.items():
        os.environ[name] = value
    import solara.server.settings as settings

    settings.main.mode = "production"
    settings.telemetry.mixpanel_enable = False
    settings.theme.show_banner = False
    settings.theme.title = "clipwidgets"
    # Widget messages are written to the socket by the session's own thread instead of one event-loop
    # task each: a page of 24 results is ~50 messages. Needs uvicorn's "websockets" protocol.
    settings.server.sync_ws_write = True
    # A session whose page disconnected keeps its kernel this long for a reconnect, then is freed.
    settings.kernel.cull_timeout = f"{config.connect_timeout:g}s"
    import solara.settings

    solara.settings.assets.proxy = True
    cdn = Path(settings.assets.proxy_cache_dir)
    missing = [name for name in _front_end_bundles() if not (cdn / name).is_dir()]
    if missing:
        raise ClipWidgetsError(f"The app's front-end files ({', '.join(missing)}) are missing from {cdn}: "
                               "install them with `pip install solara-assets` and the vue 2 widgets "
                               "(`pip install 'ipyvue<2' 'ipyvuetify<2'`); the app never downloads them.")
    return cdn


def _front_end_bundles() -> list[str]:
    """The versioned front-end folders Solara's page template loads for the installed ipyvue."""
    import ipyvue
    import solara.server

    template = (Path(solara.server.__file__).parent / "templates" / "solara.html.j2").read_text()
    app = "solara-vuetify3-app" if ipyvue.__version__.startswith("3") else "solara-vuetify-app"
    return sorted(set(re.findall(rf"@widgetti/{app}@[0-9][0-9.]*[0-9]", template))) + ["requirejs@2.3.6"]


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind and listen on host:port now, so a port in use fails at once with a clear message."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise InvalidInputError(f"Cannot listen on {host}:{port} ({error.strerror}): the port is already in "
                                "use or the address is not this machine's; stop the other server or pick "
                                "another port with --port.") from error
    sock.listen(2048)
    sock.set_inheritable(False)
    return sock


def app_url(host: str, port: int, token: str | None = None) -> str:
    """The address to open in a browser (with the token, when there is one)."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


class AppServer:
    """Serve `shared` with `config` until stopped; `run()` blocks, `stop()` may come from any thread."""

    def __init__(self, shared: SharedSearch, config: AppConfig, *, sock: socket.socket | None = None) -> None:
        self.shared = shared
        self.config = config
        self.sock = sock if sock is not None else bind_socket(config.host, config.port)
        self.port = self.sock.getsockname()[1]
        cdn = configure_solara(config)
        from solara.server import app as solara_app
        from solara.server import starlette as solara_starlette

        from . import page
        from .guard import Guard
        from .sessions import Sessions

        page.install(shared)
        solara_app.apps["__default__"] = solara_app.AppScript("clipwidgets.app.page:Page")
        self.sessions = Sessions(config.session_limit, idle_timeout=config.idle_timeout,
                                 connect_timeout=config.connect_timeout)
        self.asgi = Guard(solara_starlette.app, config, self.sessions, cdn_dir=cdn)
        self._server: Any = None
        self._stop = threading.Event()

    def run(self, *, on_ready: Callable[[str], None] | None = None) -> None:
        """Serve until SIGINT/SIGTERM or `stop()`; calls `on_ready(url)` once connections are accepted."""
        import uvicorn

        warnings.filterwarnings("ignore", message="The `websockets` implementation is deprecated",
                                category=UserWarning)

        uv_config = uvicorn.Config(self.asgi, log_level="warning", access_log=False, lifespan="on",
                                   ws="websockets", ws_max_size=self.config.max_message_bytes,
                                   ws_ping_interval=20.0, ws_ping_timeout=20.0, timeout_graceful_shutdown=3,
                                   proxy_headers=False, server_header=False, loop="asyncio")
        self._server = server = uvicorn.Server(uv_config)
        reaper = threading.Thread(target=self._reap_loop, name="clipwidgets-reaper", daemon=True)
        watcher = threading.Thread(target=self._announce, args=(on_ready,), name="clipwidgets-ready",
                                   daemon=True)
        reaper.start()
        watcher.start()
        try:
            server.run(sockets=[self.sock])
        finally:
            self._stop.set()
            self.sock.close()
        if not server.started:
            raise ClipWidgetsError(f"The app server on {self.config.host}:{self.port} stopped before it "
                                   "started; see the messages above.")

    def stop(self) -> None:
        """Ask the server to finish (open websockets get `timeout_graceful_shutdown` seconds)."""
        if self._server is not None:
            self._server.should_exit = True

    def _announce(self, on_ready: Callable[[str], None] | None) -> None:
        while not self._stop.wait(0.05):
            if self._server is not None and self._server.started:
                if on_ready is not None:
                    on_ready(app_url(self.config.host, self.port, self.config.token))
                return

    def _reap_loop(self) -> None:
        while not self._stop.wait(self.config.reap_every):
            try:
                self.sessions.reap()
            except Exception:  # the reaper must survive a session that fails to close
                _log.exception("freeing idle sessions failed")
