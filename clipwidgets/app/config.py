"""The app server's settings: address, session limits, timeouts, allowed Host names and token."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import socket
from dataclasses import dataclass

from ..errors import InvalidInputError
from ..settings import DEFAULT_HOST, DEFAULT_PORT

__all__ = ["MAX_DEFAULT_SESSIONS", "SESSIONS_PER_CORE", "SESSION_BUDGET_BYTES", "AppConfig", "LOOPBACK_NAMES",
           "default_max_sessions", "is_loopback", "make_token"]

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
SESSION_BUDGET_BYTES = 64 * 2**20  # generous per-session allowance (measured: ~2 MB with a page shown)
SESSIONS_PER_CORE = 16  # at one query a second each, ~16 sessions keep one core busy with ViT-B/32
MAX_DEFAULT_SESSIONS = 64


def default_max_sessions(*, cores: int | None = None, available_bytes: int | None = None) -> int:
    """The session limit sized to this machine: 16 per core, within a quarter of the free memory at
    64 MB a session, between 4 and 64."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if available_bytes is None:
        available_bytes = _available_memory()
    by_memory = available_bytes // 4 // SESSION_BUDGET_BYTES
    return int(max(4, min(MAX_DEFAULT_SESSIONS, SESSIONS_PER_CORE * cores, by_memory)))


def is_loopback(host: str) -> bool:
    """True for a loopback name or address (localhost, 127.x.x.x, ::1)."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def make_token() -> str:
    """A new random access token (URL-safe, 32 bytes of entropy)."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class AppConfig:
    """How the server runs. Timeouts are in seconds; `max_sessions=None` means `default_max_sessions()`."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    max_sessions: int | None = None
    idle_timeout: float = 600.0
    connect_timeout: float = 60.0
    allow_hosts: tuple[str, ...] = ()
    token: str | None = None
    max_message_bytes: int = 4 * 2**20
    reap_every: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise InvalidInputError(f"Port {self.port} is out of range: use a number from 1 to 65535, "
                                    "e.g. 7860.")
        if self.max_sessions is not None and self.max_sessions < 1:
            raise InvalidInputError(f"--max-sessions must be at least 1, got {self.max_sessions}.")
        for name in ("idle_timeout", "connect_timeout", "reap_every"):
            if getattr(self, name) <= 0:
                raise InvalidInputError(f"{name} must be more than 0 seconds, got {getattr(self, name)}.")

    @property
    def session_limit(self) -> int:
        """The maximum number of sessions (the configured one, else the machine's default)."""
        return self.max_sessions if self.max_sessions is not None else default_max_sessions()

    @property
    def loopback(self) -> bool:
        """True when the server binds a loopback address only."""
        return is_loopback(self.host)

    def allowed_hosts(self) -> frozenset[str]:
        """Host-header names accepted: loopback names, the bound address, `allow_hosts`, and for a
        wildcard address (0.0.0.0, ::) this machine's name and addresses."""
        names = {*LOOPBACK_NAMES, self.host, *self.allow_hosts}
        if self.host in ("0.0.0.0", "::", ""):
            names.discard(self.host)
            names |= _machine_names()
        return frozenset(name.strip("[]").lower() for name in names if name)


def _machine_names() -> set[str]:
    names = {socket.gethostname(), socket.getfqdn()}
    with contextlib.suppress(OSError):
        names |= set(socket.gethostbyname_ex(socket.gethostname())[2])
    return names


def _available_memory() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30
