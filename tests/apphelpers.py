"""Helpers for the app tests: a store of generated photos and `clipwidgets app` as a real subprocess."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

START_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def make_store(folder: Path, encoder, count: int = 30) -> Path:
    """A store of `count` generated 320x240 photos in `folder`/photos.h5 (images in `folder`/images)."""
    from clipwidgets.indexing import index_images
    from clipwidgets.synthetic import make_photos

    make_photos(folder / "images", count, size=(320, 240))
    index_images(folder / "images", folder / "photos.h5", encoder, workers=0, progress=False)
    return folder / "photos.h5"


def die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGKILL it when its parent dies (PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


class AppProcess:
    """`clipwidgets app ...` in its own process group, killed if the test process dies; `stop()` ends it."""

    def __init__(self, folder: Path, *args: str, name: str = "app") -> None:
        self.port = free_port()
        self.log = folder / f"{name}.log"
        command = [sys.executable, "-m", "clipwidgets.cli", "app", "--model", "tiny",
                   "--port", str(self.port), *args]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        with self.log.open("w") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=folder,
                                            env=env, start_new_session=True,
                                            preexec_fn=die_with_parent)
        self.url = f"http://127.0.0.1:{self.port}/"

    def wait_ready(self) -> AppProcess:
        deadline = time.monotonic() + START_TIMEOUT_S
        while "clipwidgets app: open" not in self.log.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"the app did not start:\n{self.log.read_text()}")
            time.sleep(0.2)
        return self

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        with contextlib.suppress(ProcessLookupError):  # anything left in its group (there should be none)
            os.killpg(self.process.pid, signal.SIGKILL)
