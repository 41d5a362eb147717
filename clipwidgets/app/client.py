"""A headless app session: speaks the page's widget protocol over the websocket, without a browser.

The load benchmark and the tests use it to open many sessions cheaply and to time queries the way
the server sees them: from sending the query box's new value to the kernel's "idle" reply to that
message, by which time every widget update of the new page (24 thumbnails included) has been sent.
"""

from __future__ import annotations

import contextlib
import json
import re
import struct
import time
import uuid
from typing import Any
from urllib.parse import urlencode, urlsplit

from websockets.sync.client import ClientConnection, connect

__all__ = ["QUERY_PLACEHOLDER", "AppSession", "decode_frame", "kernel_url"]

QUERY_PLACEHOLDER = "Describe the image you want"
_NAME = re.compile(r'class="clipwidgets-name"[^>]*>([^<]*)<')


def kernel_url(base_url: str, kernel_id: str, *, page_id: str, token: str | None = None) -> str:
    """The websocket address of a session's kernel on the server at `base_url`."""
    parts = urlsplit(base_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    query = {"session_id": page_id, **({"token": token} if token else {})}
    return f"{scheme}://{parts.netloc}/jupyter/api/kernels/{kernel_id}/channels?{urlencode(query)}"


def decode_frame(frame: str | bytes) -> dict[str, Any]:
    """A message from a text frame, or from a binary frame (offset table, JSON, then buffers)."""
    if isinstance(frame, str):
        return json.loads(frame)
    count = struct.unpack("!I", frame[:4])[0]
    offsets = list(struct.unpack(f"!{count}I", frame[4:4 + 4 * count])) + [len(frame)]
    parts = [frame[start:stop] for start, stop in zip(offsets[:-1], offsets[1:], strict=True)]
    message = json.loads(parts[0].decode("utf8"))
    message["buffers"] = parts[1:]
    return message


class AppSession:
    """One session of the app, as a browser tab would open it (the page load is not fetched here).

    `open()` connects and runs the page; `search(text)` and `more_like(position)` act on the panel
    and return the seconds until the server finished answering. `widgets` maps each model id to its
    latest state.
    """

    def __init__(self, base_url: str, *, origin: str | None = None, token: str | None = None,
                 timeout: float = 60.0, cookie: str | None = None) -> None:
        self.base_url = base_url.rstrip("/") + "/"
        self.origin = origin if origin is not None else self.base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.kernel_id = str(uuid.uuid4())
        self.page_id = str(uuid.uuid4())
        self.cookie = cookie or f"solara-session-id={uuid.uuid4()}"
        self.widgets: dict[str, dict[str, Any]] = {}
        self.messages = 0
        self._socket: ClientConnection | None = None
        self._exit = contextlib.ExitStack()

    # ---- lifecycle ---------------------------------------------------------------------------

    def connect(self) -> None:
        """Open the websocket (the server admits or refuses the session here)."""
        url = kernel_url(self.base_url, self.kernel_id, page_id=self.page_id, token=self.token)
        headers = {"Origin": self.origin, "Cookie": self.cookie}
        self._exit = contextlib.ExitStack()
        socket = connect(url, additional_headers=headers, open_timeout=self.timeout, max_size=2**26,
                         compression=None)
        self._socket = self._exit.enter_context(socket)

    def open(self) -> float:
        """Connect, run the app and wait for the panel; returns the seconds it took."""
        started = time.perf_counter()
        self.connect()
        control = str(uuid.uuid4())
        self._send("comm_open", {"comm_id": control, "target_name": "solara.control", "data": {}})
        self._call("comm_msg", {"comm_id": control, "data": {"method": "run", "args": {
            "path": "", "appName": None, "themes": None, "dark": False}}})
        if self.panel_id() is None:
            raise RuntimeError("the app answered but sent no SearchPanel")
        return time.perf_counter() - started

    def close(self) -> None:
        """Close the websocket (the server frees the session after its reconnect grace time)."""
        if self._socket is not None:
            self._exit.close()
            self._socket = None

    def __enter__(self) -> AppSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the panel -------------------------------------------------------------------------------

    def search(self, text: str) -> float:
        """Type `text` in the query box (what Enter sends); returns the seconds until answered."""
        return self._update(self._find(QUERY_PLACEHOLDER), {"value": text})

    def more_like(self, position: int) -> float:
        """Click "More like this" on the card at `position`; returns the seconds until answered."""
        card = self.children(self._with_class("clipwidgets-grid"))[position]
        buttons = self.children(self.children(card)[2])
        return self._call("comm_msg", {"comm_id": buttons[0], "data": {
            "method": "custom", "content": {"event": "click"}}})

    def status(self) -> str:
        """The status line's text (HTML tags removed)."""
        status = self._with_class("clipwidgets-status")
        return "" if status is None else _strip_tags(self.widgets[status].get("value", ""))

    def card_names(self) -> list[str]:
        """The file names on the cards the grid shows, in order."""
        grid = self._with_class("clipwidgets-grid")
        names = []
        for card in self.children(grid):
            found = _NAME.search(self.widgets[self.children(card)[1]].get("value", ""))
            names.append(found.group(1) if found else "")
        return names

    def panel_id(self) -> str | None:
        """The model id of the SearchPanel, once the app has sent it."""
        return self._with_class("clipwidgets-panel")

    def _with_class(self, dom_class: str) -> str | None:
        """The model id of the widget with CSS class `dom_class` (the panel marks its parts so)."""
        for model_id, state in self.widgets.items():
            if dom_class in state.get("_dom_classes", ()):
                return model_id
        return None

    def children(self, model_id: str | None) -> list[str]:
        """The model ids of a box's children."""
        if model_id is None:
            raise RuntimeError("the panel has not arrived")
        return [ref.removeprefix("IPY_MODEL_") for ref in self.widgets[model_id].get("children", ())]

    def text_of(self, needle: str) -> str | None:
        """The first HTML or Label widget value containing `needle` (tags removed)."""
        for state in self.widgets.values():
            value = state.get("value")
            if isinstance(value, str) and needle in value:
                return _strip_tags(value)
        return None

    def listen(self, seconds: float) -> None:
        """Take in what the server sends for `seconds` (e.g. progress updates), without acting."""
        deadline = time.perf_counter() + seconds
        with contextlib.suppress(TimeoutError):
            while True:
                self._receive(deadline)

    # ---- protocol --------------------------------------------------------------------------------

    def _find(self, placeholder: str) -> str:
        for model_id, state in self.widgets.items():
            if str(state.get("placeholder", "")).startswith(placeholder):
                return model_id
        raise RuntimeError(f"no widget with the placeholder {placeholder!r}")

    def _update(self, model_id: str, state: dict[str, Any]) -> float:
        return self._call("comm_msg", {"comm_id": model_id, "data": {
            "method": "update", "state": state, "buffer_paths": []}})

    def _call(self, msg_type: str, content: dict[str, Any]) -> float:
        """Send a message and read until the kernel reports idle for it; returns the seconds."""
        started = time.perf_counter()
        msg_id = self._send(msg_type, content)
        deadline = started + self.timeout
        while True:
            message = self._receive(deadline)
            if (message.get("msg_type") == "status" or message["header"].get("msg_type") == "status") \
                    and message.get("parent_header", {}).get("msg_id") == msg_id \
                    and message["content"].get("execution_state") in ("idle", "dead"):
                return time.perf_counter() - started

    def _send(self, msg_type: str, content: dict[str, Any]) -> str:
        assert self._socket is not None, "connect() first"
        msg_id = uuid.uuid4().hex
        self._socket.send(json.dumps({
            "header": {"msg_id": msg_id, "msg_type": msg_type, "username": "", "session": self.page_id,
                       "version": "5.3", "date": ""},
            "parent_header": {}, "metadata": {}, "content": content, "channel": "shell", "buffers": []}))
        return msg_id

    def _receive(self, deadline: float) -> dict[str, Any]:
        assert self._socket is not None, "connect() first"
        left = deadline - time.perf_counter()
        if left <= 0:
            raise TimeoutError(f"the server did not answer within {self.timeout:.0f} s")
        message = decode_frame(self._socket.recv(timeout=left))
        self.messages += 1
        msg_type = message["header"].get("msg_type")
        content = message.get("content", {})
        if msg_type == "comm_open" and content.get("target_name") == "jupyter.widget":
            self.widgets[content["comm_id"]] = dict(content.get("data", {}).get("state", {}))
        elif msg_type == "comm_msg" and content.get("comm_id") in self.widgets:
            data = content.get("data", {})
            if data.get("method") == "update":
                self.widgets[content["comm_id"]].update(data.get("state", {}))
        elif msg_type == "comm_close":
            self.widgets.pop(content.get("comm_id"), None)
        return message


def _strip_tags(html: str) -> str:
    out, inside = [], False
    for char in html:
        if char == "<":
            inside = True
        elif char == ">":
            inside = False
        elif not inside:
            out.append(char)
    return "".join(out).strip()
