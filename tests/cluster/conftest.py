"""Fixtures of the fault tests: one three-node RabbitMQ cluster for the whole session, and for
each test a federation of node agent processes on it.

The cluster (``tests/support/cluster.py``) runs beside the shared broker on 5672 with ports,
names and an Erlang cookie of its own, and is destroyed at the end of the session. It is
started once, when the first test needs it; if it cannot start, every test here fails with
the reason. Before each test every node is running again and every quorum queue fully
replicated, so a test may lose any one node.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from broker_net.amqp import AmqpTransport
from broker_net.crypto.authentication import Security
from broker_net.crypto.introductions import introduce
from broker_net.topology import Topology
from node_agent.plans import PlanRegistry
from researcher.requests.router import Requests
from simulation.demo_plan import BreastCancerPlan
from simulation.demo_setup import register_demo_shard
from tests.support.cluster import ClusterError, LocalCluster
from training_plans.plan import plan_source

ROOT = Path(__file__).resolve().parents[2]
VHOST = "broker-net-faults"
RESEARCHER = "alice"
NODES = ("site-1", "site-2", "site-3")


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    """Three RabbitMQ nodes clustered on 127.0.0.1 for this session, with vhost ``VHOST``."""
    LocalCluster.remove_orphans()
    cluster = LocalCluster(Path(tempfile.mkdtemp(prefix="broker-net-cluster-")))
    try:
        try:
            cluster.start()
            cluster.add_vhost(VHOST)
        except (ClusterError, OSError, subprocess.SubprocessError) as exc:
            pytest.fail(
                f"the three-node RabbitMQ cluster of tests/cluster could not start: {exc}",
                pytrace=False,
            )
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def healthy_cluster(cluster: LocalCluster) -> LocalCluster:
    """The session's cluster with every node running and every quorum queue replicated."""
    for number in cluster.nodes:
        if number not in cluster.running():
            cluster.start_node(number)
    cluster.wait_replicated(VHOST)
    return cluster


@dataclass
class Federation:
    """A researcher's folder and three node agents, each holding a shard of the demo data,
    trusting the researcher and having approved the demo training plan."""

    cluster: LocalCluster
    root: Path
    namespace: str
    nodes: tuple[str, ...]
    datasets: dict[str, str]
    security: Security
    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def topology(self) -> Topology:
        """The quorum topology of this federation's namespace."""
        return Topology(self.namespace, "quorum")

    def start_agent(self, node: str, first_broker: int) -> None:
        """Start ``node``'s agent (``python -m node_agent start``), connected first to broker
        node ``first_broker`` and failing over to the others."""
        env = {
            **os.environ,
            "BROKER_NET_NODE_NODE_ID": node,
            "BROKER_NET_NODE_DATA_DIR": str(self.root / node),
            "BROKER_NET_NODE_AMQP_URL": self.cluster.urls(VHOST, first=first_broker),
            "BROKER_NET_NODE_NAMESPACE": self.namespace,
            "BROKER_NET_NODE_QUEUE_TYPE": "quorum",
            "BROKER_NET_NODE_HEARTBEAT_INTERVAL": "0.5",
            "BROKER_NET_NODE_LOG_LEVEL": "INFO",
        }
        with self.log_path(node).open("ab") as log:
            self.agents[node] = subprocess.Popen(
                [sys.executable, "-m", "node_agent", "start"],
                env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log,
            )  # fmt: skip

    def log_path(self, node: str) -> Path:
        """Where ``node``'s agent writes its log."""
        return self.root / f"{node}.log"

    def log(self, node: str) -> str:
        """What ``node``'s agent has logged so far."""
        path = self.log_path(node)
        return path.read_text(errors="replace") if path.exists() else ""

    def stop_agents(self) -> None:
        """SIGTERM every agent, and SIGKILL those still running after 20 s."""
        for process in self.agents.values():
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + 20
        for process in self.agents.values():
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)

    @asynccontextmanager
    async def researcher(self, first_broker: int) -> AsyncIterator[Requests]:
        """The researcher, connected first to broker node ``first_broker``, once every agent
        is online."""
        url = self.cluster.urls(VHOST, first=first_broker)
        async with (
            AmqpTransport(url, connection_name=f"researcher:{self.namespace}") as transport,
            Requests(
                transport, RESEARCHER, topology=self.topology, security=self.security
            ) as requests,
        ):
            await requests.wait_for_nodes(self.nodes, timeout=90)
            yield requests


@pytest.fixture
def federation(healthy_cluster: LocalCluster, tmp_path: Path) -> Iterator[Federation]:
    """Three nodes and a researcher who trust each other, in a fresh namespace; the agents
    are started by the test and stopped afterwards."""
    researcher_dir = tmp_path / RESEARCHER
    introduce(RESEARCHER, researcher_dir, {node: tmp_path / node for node in NODES})
    datasets = {}
    for index, node in enumerate(NODES):
        entry, _ = register_demo_shard(tmp_path / node, index, len(NODES))
        datasets[node] = entry.dataset_id
        with PlanRegistry(tmp_path / node) as plans:  # the operators reviewed the plan
            plans.approve(plans.register(plan_source(BreastCancerPlan)).plan_id)
    security = Security.load(
        researcher_dir / "identity", RESEARCHER, "researcher", researcher_dir / "trusted-nodes"
    )
    federation = Federation(
        cluster=healthy_cluster,
        root=tmp_path,
        namespace=f"f{uuid.uuid4().hex[:10]}",
        nodes=NODES,
        datasets=datasets,
        security=security,
    )
    try:
        yield federation
    finally:
        federation.stop_agents()
