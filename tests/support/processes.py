"""Start node agent processes for tests and make sure they are gone afterwards."""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class AgentProcesses:
    """Node agents started as separate processes; :meth:`stop_all` ends them."""

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
