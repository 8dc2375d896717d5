"""``researcher dashboard`` as a process of its own, for tests: started on a free port, its
URL read from what it prints, stopped afterwards."""

from __future__ import annotations

import os
import re
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import parse_qs, urlparse

from tests.support.processes import ROOT

_URL = re.compile(r"dashboard: (http://\S+)")


@dataclass(frozen=True)
class RunningDashboard:
    """A dashboard process and the URL it printed."""

    process: subprocess.Popen[str]
    url: str

    @property
    def base(self) -> str:
        """The URL without its query: ``http://127.0.0.1:<port>``."""
        parsed = urlparse(self.url)
        return f"{parsed.scheme}://{parsed.netloc}"

    @property
    def token(self) -> str:
        return parse_qs(urlparse(self.url).query)["token"][0]


@contextmanager
def dashboard_process(
    env: Mapping[str, str], *options: str, timeout: float = 30.0
) -> Iterator[RunningDashboard]:
    """Start ``researcher dashboard --port 0 OPTIONS`` with ``env`` added to the environment;
    yield once it printed its URL; stop it afterwards."""
    command = [sys.executable, "-c", "from researcher.cli.main import main; main()",
               "dashboard", "--port", "0", *options]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **env},
    )  # fmt: skip
    try:
        yield RunningDashboard(process, _read_url(process, timeout))
    finally:
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def _read_url(process: subprocess.Popen[str], timeout: float) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                break
            line = process.stdout.readline()
            if not line:
                break
            found = _URL.search(line)
            if found:
                return found.group(1)
    process.kill()
    _, errors = process.communicate(timeout=10)
    raise RuntimeError(f"the dashboard printed no URL (exit code {process.returncode}): {errors}")
