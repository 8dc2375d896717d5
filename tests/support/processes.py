"""Start node agent processes for tests and make sure they are gone afterwards."""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
from functools import partial
from pathlib import Path

import anyio.to_thread

ROOT = Path(__file__).resolve().parents[2]


class AgentProcesses:
    """Node agents started as separate processes; :meth:`stop_all` ends them.

    The plain methods block. A test whose event loop runs a researcher or an agent uses the
    ``a``-prefixed ones, which block a worker thread instead: the loop goes on taking
    heartbeats and replies while an agent starts or stops.
    """

    def __init__(self, amqp_url: str, namespace: str, base_dir: Path) -> None:
        self.amqp_url = amqp_url
        self.namespace = namespace
        self.base_dir = base_dir
        self.processes: dict[str, subprocess.Popen[str]] = {}
        self._all: list[subprocess.Popen[str]] = []

    def start(
        self, node_id: str, *extra: str, wait: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.Popen[str]:
        """Start a test agent (see tests/support/agent_process.py) and wait until it consumes.

        ``env`` adds ``BROKER_NET_NODE_*`` settings, e.g. a short plan timeout.
        """
        command = [
            sys.executable, "-m", "tests.support.agent_process",
            "--node-id", node_id, "--namespace", self.namespace,
            "--amqp-url", self.amqp_url, "--data-dir", str(self.base_dir / node_id), *extra,
        ]  # fmt: skip
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}
        )
        self.processes[node_id] = process
        self._all.append(process)
        if wait:
            self.wait_ready(node_id)
        return process

    def start_all(
        self, node_ids: list[str], *extra: str, env: dict[str, str] | None = None
    ) -> None:
        """Start several agents at once, then wait until every one consumes."""
        for node_id in node_ids:
            self.start(node_id, *extra, wait=False, env=env)
        for node_id in node_ids:
            self.wait_ready(node_id)

    def wait_ready(self, node_id: str, timeout: float = 30.0) -> None:
        """Wait until the agent prints ``ready``; a RuntimeError when it exits first or says
        nothing within ``timeout`` seconds (the wait never outlives its deadline)."""
        process = self.processes[node_id]
        assert process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            if not selector.select(timeout):
                raise RuntimeError(f"agent {node_id} did not start within {timeout} s")
        line = process.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"agent {node_id} did not start (exit code {process.poll()})")

    def kill(self, node_id: str) -> None:
        """SIGKILL an agent, as a crash would."""
        process = self.processes[node_id]
        process.kill()
        process.wait(timeout=10)

    def stop_all(self) -> None:
        for process in self._all:
            if process.poll() is None:
                process.terminate()
        for process in self._all:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
            if process.stdout is not None:
                process.stdout.close()

    async def astart(
        self, node_id: str, *extra: str, wait: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.Popen[str]:
        """:meth:`start` in a worker thread."""
        return await anyio.to_thread.run_sync(
            partial(self.start, node_id, *extra, wait=wait, env=env)
        )

    async def astart_all(
        self, node_ids: list[str], *extra: str, env: dict[str, str] | None = None
    ) -> None:
        """:meth:`start_all` in a worker thread."""
        await anyio.to_thread.run_sync(partial(self.start_all, node_ids, *extra, env=env))

    async def akill(self, node_id: str) -> None:
        """:meth:`kill` in a worker thread."""
        await anyio.to_thread.run_sync(self.kill, node_id)

    async def astop(self, node_id: str, timeout: float = 20.0) -> int:
        """SIGTERM an agent and wait (in a worker thread) until it exits; its exit code."""
        process = self.processes[node_id]
        process.terminate()
        return await anyio.to_thread.run_sync(partial(process.wait, timeout=timeout))

    async def astop_all(self) -> None:
        """:meth:`stop_all` in a worker thread."""
        await anyio.to_thread.run_sync(self.stop_all)
