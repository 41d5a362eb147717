"""The gate in front of Solara: Host allowlist, Origin check, token, routes, admission, frame checks.

Every request passes here first (plain ASGI, no framework):
- the Host header must name an allowed host (defeats DNS rebinding);
- websockets and non-GET requests must come from the app's own origin when they carry an Origin;
- with a token, it must come as `?token=` (then kept in an HttpOnly cookie), cookie or header;
- only the page, its static assets and the widget websocket are routed; no route runs code or
  lists files (Solara's other routes, e.g. /resourcez, answer 404);
- page loads and websockets are admitted by `Sessions` (a busy page, HTTP 503, past the limit);
- each websocket message is checked by `frames.frame_problem`; a bad one closes that websocket only.
"""

from __future__ import annotations

import hmac
import html
import logging
import re
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .config import AppConfig, is_loopback
from .frames import frame_problem
from .sessions import Sessions

__all__ = ["BUSY_RETRY_S", "CDN_PREFIX", "CLOSE_BEACON", "Guard", "KERNEL_SOCKET", "STATIC_PREFIXES",
           "TOKEN_COOKIE", "host_name"]

_Scope = MutableMapping[str, Any]
_Message = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[_Message]]
_Send = Callable[[_Message], Awaitable[None]]
_ASGIApp = Callable[[_Scope, _Receive, _Send], Awaitable[None]]

TOKEN_COOKIE = "clipwidgets-token"
KERNEL_SOCKET = re.compile(r"^/jupyter/api/kernels/([0-9A-Za-z-]{1,64})/channels$")
CLOSE_BEACON = re.compile(r"^/_solara/api/close/[0-9A-Za-z-]{1,64}$")
STATIC_PREFIXES = ("/static/", "/jupyter/nbextensions/")
CDN_PREFIX = "/_solara/cdn/"
BUSY_RETRY_S = 30
_log = logging.getLogger(__name__)


def host_name(value: str) -> str:
    """The host part of a Host header or URL netloc, lower case, without port or brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value[1:]
    if value.count(":") == 1:
        return value.split(":", 1)[0]
    return value


class Guard:
    """ASGI middleware around the Solara app; see the module docstring."""

    def __init__(self, app: _ASGIApp, config: AppConfig, sessions: Sessions, *,
                 cdn_dir: Path | None = None) -> None:
        self.app = app
        self.config = config
        self.sessions = sessions
        self.hosts = config.allowed_hosts()
        self.cdn_dir = cdn_dir.resolve() if cdn_dir is not None else None

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        problem = self._refusal(scope, headers)
        if problem is not None:
            status, text = problem
            await _refuse(kind, receive, send, status, text)
            return
        if kind == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["path"] == "/" and scope["method"] == "GET" and not self.sessions.admit_page():
            await _respond(send, 503, _busy_page(self.sessions.limit), html_page=True,
                           extra=[(b"retry-after", str(BUSY_RETRY_S).encode())])
            return
        await self.app(scope, receive, self._with_token_cookie(scope, send))

    # ---- checks ---------------------------------------------------------------------------------

    def _refusal(self, scope: _Scope, headers: dict[str, str]) -> tuple[int, str] | None:
        """(status, reason) when the request must be refused, else None."""
        host = host_name(headers.get("host", ""))
        if host not in self.hosts:
            return 403, (f"Host {host or '(none)'!r} is not allowed: open the address clipwidgets app "
                         "printed, or start it with --allow-host NAME.")
        origin = headers.get("origin")
        unsafe = scope["type"] == "websocket" or scope.get("method") not in ("GET", "HEAD")
        if unsafe and origin is not None and not self._own_origin(origin, headers):
            return 403, f"Origin {origin[:80]!r} is not this app: requests from other sites are refused."
        if self.config.token is not None and not self._has_token(scope, headers):
            return 403, ("This app needs its token: open the address with ?token=... that clipwidgets app "
                         "printed.")
        if not self._routed(scope):
            return 404, "Not found."
        return None

    def _own_origin(self, origin: str, headers: dict[str, str]) -> bool:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or host_name(parts.netloc) not in self.hosts:
            return False
        if is_loopback(host_name(parts.netloc)):  # another local web app must not drive this one
            return parts.netloc.lower() == headers.get("host", "").lower()
        return True

    def _has_token(self, scope: _Scope, headers: dict[str, str]) -> bool:
        token = self.config.token or ""
        offered = [*_query(scope).get("token", [])]
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:  # a malformed cookie header is just no cookie
            cookie = SimpleCookie()
        if TOKEN_COOKIE in cookie:
            offered.append(cookie[TOKEN_COOKIE].value)
        auth = headers.get("authorization", "")
        if auth.lower().startswith(("token ", "bearer ")):
            offered.append(auth.split(" ", 1)[1].strip())
        return any(hmac.compare_digest(value.encode(), token.encode()) for value in offered)

    def _routed(self, scope: _Scope) -> bool:
        path = scope["path"]
        if scope["type"] == "websocket":
            return KERNEL_SOCKET.match(path) is not None
        method = scope["method"]
        if method == "POST":
            return CLOSE_BEACON.match(path) is not None
        if method not in ("GET", "HEAD"):
            return False
        if path in ("/", "/readyz") or path.startswith(STATIC_PREFIXES):
            return ".." not in path.split("/")
        if path.startswith(CDN_PREFIX) and self.cdn_dir is not None:
            return self._cached_asset(path[len(CDN_PREFIX):])
        return False

    def _cached_asset(self, relative: str) -> bool:
        """Only assets already on disk: the CDN proxy must never fetch from the internet."""
        assert self.cdn_dir is not None
        target = (self.cdn_dir / relative).resolve()
        return target.is_file() and target.is_relative_to(self.cdn_dir)

    # ---- websockets -----------------------------------------------------------------------------

    async def _websocket(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        match = KERNEL_SOCKET.match(scope["path"])
        assert match is not None
        kernel_id = match.group(1)
        refused = self.sessions.admit_socket(kernel_id)
        if refused is not None:
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1013, "reason": refused[:120]})
            return
        closed = False

        async def checked_receive() -> _Message:
            nonlocal closed
            message = await receive()
            if message["type"] != "websocket.receive":
                return message
            frame = message.get("bytes") if message.get("bytes") is not None else message.get("text")
            problem = frame_problem(frame, max_bytes=self.config.max_message_bytes)
            if problem is None:
                self.sessions.touch(kernel_id)
                return message
            _log.warning("closing the websocket of session %s: %s", kernel_id[:8], problem)
            if not closed:
                closed = True
                await send({"type": "websocket.close", "code": 1008, "reason": problem[:120]})
            return {"type": "websocket.disconnect", "code": 1008}

        async def guarded_send(message: _Message) -> None:
            if closed and message["type"] in ("websocket.send", "websocket.close"):
                return  # this websocket was closed for a bad frame: drop what is still queued
            await send(message)

        try:
            await self.app(scope, checked_receive, guarded_send)
        finally:
            self.sessions.socket_closed(kernel_id)

    # ---- responses ------------------------------------------------------------------------------

    def _with_token_cookie(self, scope: _Scope, send: _Send) -> _Send:
        """Keep a token given in the URL as an HttpOnly cookie, so the page's other requests carry it."""
        token = self.config.token
        if token is None or not _query(scope).get("token"):
            return send

        async def send_with_cookie(message: _Message) -> None:
            if message["type"] == "http.response.start":
                cookie = f"{TOKEN_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"set-cookie", cookie.encode("latin-1"))]}
            await send(message)

        return send_with_cookie


def _headers(scope: _Scope) -> dict[str, str]:
    pairs = scope.get("headers", [])
    return {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in pairs}


def _query(scope: _Scope) -> dict[str, list[str]]:
    return parse_qs(scope.get("query_string", b"").decode("latin-1"))


async def _refuse(kind: str, receive: _Receive, send: _Send, status: int, text: str) -> None:
    if kind == "websocket":  # closing before accepting makes the server answer the handshake with 403
        await receive()  # websocket.connect
        await send({"type": "websocket.close", "code": 1008, "reason": text[:120]})
    else:
        await _respond(send, status, text)


async def _respond(send: _Send, status: int, body: str, *, html_page: bool = False,
                   extra: list[tuple[bytes, bytes]] | None = None) -> None:
    data = body.encode("utf-8")
    kind = b"text/html; charset=utf-8" if html_page else b"text/plain; charset=utf-8"
    headers = [(b"content-type", kind), (b"content-length", str(len(data)).encode()),
               (b"cache-control", b"no-store"), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def _busy_page(limit: int) -> str:
    return ("<!doctype html><html><head><meta charset='utf-8'><title>clipwidgets: busy</title></head>"
            "<body style='font-family: sans-serif; margin: 3em'><h2>clipwidgets is busy</h2>"
            f"<p>{html.escape(str(limit))} sessions are open, the most this server allows. "
            "Try again shortly: sessions left idle are closed after a few minutes.</p></body></html>")
