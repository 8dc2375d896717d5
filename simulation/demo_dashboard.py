"""The dashboard beside the demo (``broker-net-demo run --dashboard``): ``researcher dashboard``
in a process of its own, on 127.0.0.1 and a free port, reading the demo's researcher data
folder, where the demo records its job (:mod:`simulation.demo_record`)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.to_thread

STARTUP_TIMEOUT = 60.0
"""Seconds the dashboard gets to print its URL."""

_COMMAND = "from researcher.cli.main import main; main()"


class DashboardError(RuntimeError):
    """The dashboard did not start."""


@asynccontextmanager
async def demo_dashboard(
    data_dir: Path, *, amqp_url: str, namespace: str, researcher_id: str
) -> AsyncIterator[str]:
    """Serve the dashboard of the researcher data folder ``data_dir`` while inside; yield its
    URL (with its token).

    Raises:
        DashboardError: it ended or printed no URL within :data:`STARTUP_TIMEOUT` seconds.
    """
    env = dict(os.environ)
    env.update(
        BROKER_NET_RESEARCHER_DATA_DIR=str(data_dir),
        BROKER_NET_RESEARCHER_AMQP_URL=amqp_url,
        BROKER_NET_RESEARCHER_NAMESPACE=namespace,
        BROKER_NET_RESEARCHER_RESEARCHER_ID=researcher_id,
    )
    process = subprocess.Popen(  # noqa: ASYNC220 (spawning returns at once)
        [sys.executable, "-c", _COMMAND, "dashboard", "--host", "127.0.0.1", "--port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    output = process.stdout
    try:
        line = ""
        with anyio.move_on_after(STARTUP_TIMEOUT):
            if output is not None:
                line = await anyio.to_thread.run_sync(output.readline, abandon_on_cancel=True)
        url = line.strip().removeprefix("dashboard: ")
        if not url.startswith("http://"):
            raise DashboardError(f"the dashboard did not start (it said {line.strip()!r})")
        yield url
    finally:
        process.terminate()
        try:
            await anyio.to_thread.run_sync(process.wait, 10)
        except subprocess.TimeoutExpired:
            process.kill()
            await anyio.to_thread.run_sync(process.wait)
        if output is not None:
            output.close()
