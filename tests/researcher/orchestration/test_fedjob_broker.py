"""A job over RabbitMQ with node agent processes: the Python job, its exported spec submitted
with ``researcher job submit`` and its simulation give the same results."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import numpy as np
import pytest

from broker_net.amqp import AmqpTransport
from broker_net.crypto.authentication import Security
from broker_net.crypto.introductions import introduce
from broker_net.topology import Topology
from researcher.orchestration.fedjob import JobResult
from researcher.orchestration.lifecycle import State
from researcher.orchestration.store.job_store import JobStore
from researcher.requests.router import Requests
from simulation.demo_setup import register_demo_shard
from simulation.federation import operator, simulate_async
from tests.researcher.orchestration.test_scheduler import training_job
from tests.support.processes import ROOT, AgentProcesses

pytestmark = [pytest.mark.rabbitmq, pytest.mark.anyio]

RESEARCHER = "job-researcher"
NODES = ["hospital-a", "hospital-b", "hospital-c"]


@dataclass
class Federation:
    """Three node agent processes holding demo shards, and a researcher trusted by them."""

    amqp_url: str
    namespace: str
    nodes_dir: Path
    researcher_dir: Path
    agents: AgentProcesses

    def env(self) -> dict[str, str]:
        """The environment of a ``researcher`` process of this federation."""
        return {
            **os.environ,
            "BROKER_NET_RESEARCHER_AMQP_URL": self.amqp_url,
            "BROKER_NET_RESEARCHER_NAMESPACE": self.namespace,
            "BROKER_NET_RESEARCHER_RESEARCHER_ID": RESEARCHER,
            "BROKER_NET_RESEARCHER_DATA_DIR": str(self.researcher_dir),
        }

    def security(self) -> Security:
        return Security.load(
            self.researcher_dir / "identity", RESEARCHER, "researcher",
            self.researcher_dir / "trusted-nodes",
        )  # fmt: skip

    async def cli(self, *args: str) -> dict[str, object]:
        """Run ``python -m researcher.cli.jobs ARGS --json`` and return its JSON."""
        done = await anyio.run_process(
            [sys.executable, "-m", "researcher.cli.jobs", *args, "--json"],
            env=self.env(), cwd=ROOT, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr.decode()
        return dict(json.loads(done.stdout))


@contextmanager
def running_federation(amqp_url: str, namespace: str, root: Path) -> Iterator[Federation]:
    """Start the node agent processes of a :class:`Federation`; stop them afterwards."""
    nodes_dir, researcher_dir = root / "nodes", root / "researcher"
    for index, node in enumerate(NODES):
        register_demo_shard(nodes_dir / node, index, len(NODES))
    introduce(RESEARCHER, researcher_dir, {node: nodes_dir / node for node in NODES})
    agents = AgentProcesses(amqp_url, namespace, nodes_dir)
    try:
        for node in NODES:
            agents.start(node, "--security", wait=False)
        for node in NODES:
            agents.wait_ready(node)
        yield Federation(amqp_url, namespace, nodes_dir, researcher_dir, agents)
    finally:
        agents.stop_all()


@pytest.fixture
def federation(amqp_url: str, namespace: str, tmp_path: Path) -> Iterator[Federation]:
    with running_federation(amqp_url, namespace, tmp_path) as started:
        yield started


def assert_same_results(a: JobResult, b: JobResult) -> None:
    """Same statistics, round metrics and final model, up to the order of float sums."""
    assert a.state is State.SUCCESS, a.reason
    assert b.state is State.SUCCESS, b.reason
    assert a.outputs["stats"]["mean"] == pytest.approx(b.outputs["stats"]["mean"], rel=1e-12)
    assert a.outputs["stats"]["std"] == pytest.approx(b.outputs["stats"]["std"], rel=1e-12)
    assert len(a.rounds["train"]) == len(b.rounds["train"])
    for mine, theirs in zip(a.rounds["train"], b.rounds["train"], strict=True):
        assert mine.metrics == pytest.approx(theirs.metrics, rel=1e-9)
    for name, value in a.models["train"].items():
        np.testing.assert_allclose(b.models["train"][name], value, rtol=1e-9, atol=1e-12)


async def test_python_job_exported_spec_and_simulation_agree(
    federation: Federation, tmp_path: Path
) -> None:
    job = training_job("over-rabbitmq", rounds=3, parallelism=2, min_nodes=3)

    async with (
        AmqpTransport(federation.amqp_url, connection_name="researcher:fedjob") as transport,
        Requests(transport, RESEARCHER, topology=Topology(federation.namespace),
                 security=federation.security()) as requests,
    ):  # fmt: skip
        await requests.wait_for_nodes(NODES, timeout=20)
        with JobStore(federation.researcher_dir) as store:
            from_python = await job.run(
                requests, store=store, approver=operator(federation.nodes_dir), discovery=0
            )

    submitted = await federation.cli("job", "submit", str(job.export(tmp_path / "job.yaml")))
    with JobStore(federation.researcher_dir) as store:
        from_spec = JobResult.from_store(store, str(submitted["job_id"]))
        assert store.job(from_spec.job_id).nodes == NODES
    simulated = await simulate_async(job, len(NODES))

    assert from_python.outputs["stats"]["n_rows"] == simulated.outputs["stats"]["n_rows"]
    assert_same_results(from_python, from_spec)
    assert_same_results(from_python, simulated)
    assert from_python.rounds["train"][-1].metrics["accuracy"] > 0.9
