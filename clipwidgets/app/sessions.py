"""Bounded sessions: admission, activity, and freeing idle or abandoned sessions.

A session is a page's websocket and the virtual kernel Solara makes for it; a page load alone holds
nothing on the server. Past `limit` live sessions, page loads get the busy page and new websockets
are refused. `reap()`, called every `reap_every` seconds, closes a session whose page sent nothing
for `idle_timeout`, and one whose page connected but never started the app within
`connect_timeout`; their ids are refused afterwards (the page must be reloaded). The kernels live
in `solara.server.kernel_context.contexts`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, MutableMapping
from typing import Any

__all__ = ["Sessions"]

_log = logging.getLogger(__name__)
_FORGET_CLOSED = 4096  # how many closed session ids are remembered (and refused)


class Sessions:
    """Admission and culling of app sessions. Thread-safe; time comes from `clock` (for tests)."""

    def __init__(self, limit: int, *, idle_timeout: float, connect_timeout: float,
                 contexts: MutableMapping[str, Any] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if contexts is None:
            from solara.server import kernel_context

            contexts = kernel_context.contexts
        self.limit = limit
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self._contexts = contexts
        self._clock = clock
        self._lock = threading.Lock()
        self._opened: dict[str, float] = {}
        self._last_seen: dict[str, float] = {}
        self._sockets: dict[str, int] = {}
        self._closed: OrderedDict[str, str] = OrderedDict()

    # ---- admission ------------------------------------------------------------------------------

    def admit_page(self) -> bool:
        """A page load: True when a session could start now; False means "busy"."""
        with self._lock:
            return len(self._last_seen) < self.limit

    def admit_socket(self, kernel_id: str) -> str | None:
        """A websocket for `kernel_id` opens; returns why it is refused, or None when admitted."""
        with self._lock:
            if kernel_id in self._closed:
                return f"this session was closed ({self._closed[kernel_id]}): reload the page"
            if kernel_id not in self._last_seen:
                if len(self._last_seen) >= self.limit:
                    return "the server is busy: try again shortly"
                self._last_seen[kernel_id] = self._opened[kernel_id] = self._clock()
            self._sockets[kernel_id] = self._sockets.get(kernel_id, 0) + 1
            return None

    def socket_closed(self, kernel_id: str) -> None:
        """A websocket of `kernel_id` closed (the session lives on until Solara culls it)."""
        with self._lock:
            left = self._sockets.get(kernel_id, 1) - 1
            if left > 0:
                self._sockets[kernel_id] = left
            else:
                self._sockets.pop(kernel_id, None)

    def touch(self, kernel_id: str) -> None:
        """The page of `kernel_id` sent a message."""
        with self._lock:
            if kernel_id in self._last_seen:
                self._last_seen[kernel_id] = self._clock()

    # ---- accounting and culling -----------------------------------------------------------------

    @property
    def live(self) -> int:
        """Sessions holding (or about to hold) a kernel."""
        with self._lock:
            return len(self._last_seen)

    def reap(self) -> list[str]:
        """Close idle sessions and sessions that never started the app, forget ended ones; returns
        the ids closed."""
        now = self._clock()
        closing, ended = [], []
        with self._lock:
            for kernel_id, seen in self._last_seen.items():
                context = self._contexts.get(kernel_id)
                if now - seen >= self.idle_timeout:
                    closing.append((kernel_id, context, f"idle for {self.idle_timeout:g} s"))
                elif now - self._opened[kernel_id] >= self.connect_timeout and not _started(context):
                    closing.append((kernel_id, context, f"not started within {self.connect_timeout:g} s"))
                elif context is None and kernel_id not in self._sockets:
                    ended.append(kernel_id)  # its kernel ended (page closed, or Solara culled it)
            for kernel_id, _, reason in closing:
                self._forget(kernel_id, reason)
            for kernel_id in ended:
                self._forget(kernel_id, "ended")
        for kernel_id, context, reason in closing:
            if context is not None:
                _log.info("closing session %s: %s", kernel_id[:8], reason)
                context.close(reason="idle")
        return [kernel_id for kernel_id, _, _ in closing]

    def _forget(self, kernel_id: str, reason: str) -> None:
        self._last_seen.pop(kernel_id, None)
        self._opened.pop(kernel_id, None)
        self._closed[kernel_id] = reason
        while len(self._closed) > _FORGET_CLOSED:
            self._closed.popitem(last=False)


def _started(context: Any) -> bool:
    """True once the page asked its kernel to run the app (Solara then sets the root container)."""
    return context is not None and getattr(context, "container", None) is not None
