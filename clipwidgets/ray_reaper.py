"""Ends a local Ray instance's processes when the process that started it dies, even by SIGKILL.

Ray stops its raylet and GCS with a driver that is killed, but its dashboard and runtime-env
agents can outlive them (seen with Ray 2.60: they log that the raylet is dead, then hang). The
driver starts this watchdog (`python -m clipwidgets.ray_reaper DRIVER_PID PID:START ...`, Linux
only) after `ray.init()`; it polls the driver and, once it is gone, kills the listed processes that
are still the same ones (same start time, so a reused pid is left alone). Imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterable, Sequence

__all__ = ["POLL_S", "descendants", "identity", "kill_all", "main"]

POLL_S = 0.5


def identity(pid: int) -> str | None:
    """"PID:START" (START: the process's start time in clock ticks since boot), None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            fields = file.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return f"{pid}:{fields[19]}"


def descendants(pids: Iterable[int]) -> list[int]:
    """`pids` and every process below them, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as file:
                parent = int(file.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry))
    found: list[int] = []
    pending = list(pids)
    while pending:
        pid = pending.pop()
        if pid not in found:
            found.append(pid)
            pending.extend(children.get(pid, []))
    return found


def main(argv: Sequence[str]) -> int:
    """Wait for argv[0] (a pid) to end, then SIGKILL each "PID:START" in argv[1:] still running."""
    driver, targets = int(argv[0]), list(argv[1:])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C in the terminal is for the driver
    while True:
        try:
            os.kill(driver, 0)
        except ProcessLookupError:
            break
        except PermissionError:  # the pid was reused by another user's process: ours is gone
            break
        time.sleep(POLL_S)
    kill_all(targets)
    return 0


def kill_all(targets: Iterable[str]) -> None:
    """SIGKILL each "PID:START" process that is still running (and still the same process)."""
    for target in targets:
        pid = int(target.split(":")[0])
        if identity(pid) == target:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
