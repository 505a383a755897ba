"""The web UI in a real browser: a registry home served by `model-registry serve` in a process of
its own, and the distribution's Chromium driven by Playwright. Shared by the browser tests
(tests/test_ui_browser.py) and scripts/ui_screenshots.py.

Playwright's own browser build is a download from a host that this project's machines cannot
reach, so Playwright drives Debian's `chromium` package instead (`make browser` installs it).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Playwright

CHROMIUM = Path(os.environ.get("MODEL_REGISTRY_CHROMIUM", "/usr/bin/chromium"))
# Headless and quiet: nothing but the page under test may reach the network (there is none
# beyond loopback here), and root needs --no-sandbox.
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def browser_problem() -> str | None:
    """None when a browser can be driven here, else why not (for a skip or a failure)."""
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} is missing: `make browser` installs Debian's chromium package"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed: pip install -e '.[test]'"
    return None


def launch_chromium(playwright: Playwright) -> Browser:
    """Chromium from the distribution, headless, on a fresh temporary profile (Playwright's
    `launch` makes one for each browser and removes it on close)."""
    return playwright.chromium.launch(
        executable_path=str(CHROMIUM), args=list(CHROMIUM_ARGS), headless=True
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class ServedHome:
    """`model-registry serve` for `home` on a free loopback port, from enter to exit; its log
    is kept in a file, and quoted when it does not start."""

    def __init__(self, home: Path, *, timeout: float = 60.0) -> None:
        self.home = home
        self.timeout = timeout
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None
        self._scratch = Path(tempfile.mkdtemp(prefix="mr-serve-"))
        self.log = self._scratch / "serve.log"

    def __enter__(self) -> ServedHome:
        env = {**os.environ, "MODEL_REGISTRY_HOME": str(self.home)}
        with self.log.open("wb") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "cli", "serve", "--port", str(self.port)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            self._wait()
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop()

    def _wait(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.timeout
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"model-registry serve exited early:\n{self.tail()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"model-registry serve did not answer:\n{self.tail()}")
            time.sleep(0.1)

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(30)
        shutil.rmtree(self._scratch, ignore_errors=True)
