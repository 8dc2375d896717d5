"""``researcher status`` against running node agents, as an operator runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ADMIN, MANAGEMENT_URL
from tests.support.processes import AgentProcesses

pytestmark = pytest.mark.rabbitmq

RESEARCHER_CLI = str(Path(sys.executable).with_name("researcher"))
NODES = ("ward-1", "ward-2")
FIELDS = {
    "node_id", "online", "last_heartbeat", "seconds_since_heartbeat", "agent_version", "queue",
    "queue_depth", "consumers", "unacked", "publish_rate", "deliver_rate", "ack_rate",
}  # fmt: skip


@pytest.fixture
def agents(amqp_url: str, namespace: str, tmp_path: Path) -> Iterator[AgentProcesses]:
    processes = AgentProcesses(amqp_url, namespace, tmp_path)
    try:
        for node in NODES:
            processes.start(node)
        yield processes
    finally:
        processes.stop_all()


def status(amqp_url: str, namespace: str, *options: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("BROKER_NET")}
    env.update(
        BROKER_NET_RESEARCHER_AMQP_URL=amqp_url,
        BROKER_NET_RESEARCHER_NAMESPACE=namespace,
        BROKER_NET_RESEARCHER_MANAGEMENT_URL=MANAGEMENT_URL,
        BROKER_NET_RESEARCHER_MANAGEMENT_USER=ADMIN[0],
        BROKER_NET_RESEARCHER_MANAGEMENT_PASSWORD=ADMIN[1],
        COLUMNS="200",  # one table row per node, whatever the terminal
    )
    return subprocess.run(
        [RESEARCHER_CLI, "status", "--listen", "1.5", *options],
        env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def test_running_agents_are_listed_online(
    agents: AgentProcesses, amqp_url: str, namespace: str
) -> None:
    table = status(amqp_url, namespace)
    assert table.returncode == 0, table.stdout + table.stderr
    rows = [line for line in table.stdout.splitlines() if any(n in line for n in NODES)]
    assert len(rows) == len(NODES)
    assert all("yes" in row and "DOWN" not in row for row in rows)

    listed = status(amqp_url, namespace, "--json")
    assert listed.returncode == 0, listed.stderr
    nodes = {row["node_id"]: row for row in json.loads(listed.stdout)}
    assert set(nodes) == set(NODES)
    for node, row in nodes.items():
        assert set(row) == FIELDS
        assert row["online"] is True
        assert row["last_heartbeat"] is not None and row["seconds_since_heartbeat"] < 1.5
        assert row["queue"] == f"{namespace}.node.{node}.requests"
        assert row["consumers"] == 1
        assert (row["queue_depth"], row["unacked"]) == (0, 0)
        assert all(row[rate] >= 0 for rate in ("publish_rate", "deliver_rate", "ack_rate"))


def test_a_killed_agent_is_reported_down(
    agents: AgentProcesses, amqp_url: str, namespace: str
) -> None:
    agents.kill(NODES[0])

    listed = status(amqp_url, namespace, "--json")
    assert listed.returncode == 1
    nodes = {row["node_id"]: row for row in json.loads(listed.stdout)}
    assert nodes[NODES[0]]["online"] is False
    assert nodes[NODES[0]]["consumers"] == 0
    assert nodes[NODES[0]]["last_heartbeat"] is None
    assert nodes[NODES[1]]["online"] is True

    table = status(amqp_url, namespace)
    assert table.returncode == 1
    (down,) = [line for line in table.stdout.splitlines() if NODES[0] in line]
    assert "DOWN" in down


def test_no_node_at_all_is_an_error(amqp_url: str, namespace: str) -> None:
    empty = status(amqp_url, namespace)
    assert empty.returncode == 1
    assert "No node" in empty.stdout
