"""The in-process federation: simulate a job with node agents in this process.

::

    result = simulate(job, 3)               # job: a FedJob; three nodes site-1..site-3
    result = await simulate_async(job, 3)   # the same from async code

Node agents (:mod:`node_agent`) and a researcher (:mod:`researcher`) share one in-memory
broker, trust each other, and the simulated operators approve every plan the job submits, as
NVIDIA FLARE's ``simulator_run``. This sits above both parties, which never import each other.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import anyio

from broker_net.crypto.authentication import Security
from broker_net.crypto.introductions import introduce
from broker_net.memory import MemoryBroker, MemoryTransport
from broker_net.topology import Topology
from node_agent.agent import NodeAgent
from node_agent.datasets import DatasetRegistry
from node_agent.plans import PlanRegistry
from node_agent.settings import NodeSettings
from researcher.jobs.monitor import MonitorCallback
from researcher.orchestration.fedjob import FedJob, JobResult
from researcher.orchestration.scheduler import Scheduler
from researcher.orchestration.spec import DatasetSelector, JobSpec
from researcher.orchestration.store.job_store import JobStore
from researcher.orchestration.task_context import Approver
from researcher.requests.router import Requests
from simulation.demo_setup import DEMO_TAG, register_demo_shard

SIMULATION_RESEARCHER = "simulator"
"""The researcher id of simulations."""


def simulate(
    job: FedJob, n_nodes: int | None = None, *, workspace: Path | None = None,
    monitor: MonitorCallback | None = None,
) -> JobResult:  # fmt: skip
    """Run ``job`` in this process with in-process node agents on the in-memory transport,
    as FLARE's ``simulator_run`` (see :func:`simulate_async`)."""
    return anyio.run(lambda: simulate_async(job, n_nodes, workspace=workspace, monitor=monitor))


async def simulate_async(
    job: FedJob, n_nodes: int | None = None, *, workspace: Path | None = None,
    monitor: MonitorCallback | None = None,
) -> JobResult:  # fmt: skip
    """Run ``job`` with simulated nodes and return its result.

    The nodes are the spec's simulation datasets' nodes, else the nodes tasks are placed on
    by name, else ``site-1`` ... ``site-<n_nodes>``. Each registers its simulation dataset,
    or a shard of the demo data (then the job finds datasets by the demo tag); the simulated
    operators approve every plan the job submits.

    Args:
        n_nodes: how many nodes, when the job names none.
        workspace: a folder for the nodes' data and the job store (default: a temporary
            folder, removed afterwards).
        monitor: called with the nodes' training progress (see :mod:`researcher.jobs.monitor`).

    Raises:
        ValueError: the job names no node and ``n_nodes`` is not given.
    """
    spec = job.spec
    nodes = sorted(spec.simulation) or spec.named_nodes()
    if not nodes:
        if not n_nodes:
            raise ValueError("the job names no node: give n_nodes")
        nodes = [f"site-{index}" for index in range(1, n_nodes + 1)]
    if not spec.simulation:
        spec = spec.model_copy(update={"datasets": DatasetSelector(tags=[DEMO_TAG])})
    elif spec.datasets.ids:
        spec = spec.model_copy(update={"datasets": DatasetSelector(tags=["simulation"])})
    with tempfile.TemporaryDirectory(prefix="broker-net-simulation-") as tmp:
        root = workspace or Path(tmp)
        for index, node in enumerate(nodes):
            folder = root / "nodes" / node
            await anyio.to_thread.run_sync(_register, spec, folder, node, index, len(nodes))
        async with _simulated_network(root, nodes) as requests:
            with JobStore(root / "researcher") as store:
                scheduler = Scheduler(
                    store, requests, approver=operator(root / "nodes"), discovery=0,
                    monitor=monitor,
                )  # fmt: skip
                record = scheduler.submit(spec)
                await scheduler.run_job(record.job_id)
                return JobResult.from_store(store, record.job_id)


def _register(spec: JobSpec, folder: Path, node: str, index: int, count: int) -> None:
    dataset = spec.simulation.get(node)
    if dataset is None:
        register_demo_shard(folder, index, count)
        return
    folder.mkdir(parents=True, exist_ok=True)
    with DatasetRegistry(folder) as registry:
        if not registry.list(spec.datasets.tags):
            registry.add(
                dataset.path,
                name=dataset.name or dataset.path.stem,
                tags=list(dict.fromkeys([*dataset.tags, *spec.datasets.tags])),
                target=dataset.target,
                description="registered by a simulation",
            )


@asynccontextmanager
async def _simulated_network(root: Path, nodes: list[str]) -> AsyncIterator[Requests]:
    """Node agents and a researcher on one in-memory broker, trusting each other."""
    broker = MemoryBroker()
    topology = Topology("simulation")
    researcher_dir = root / "researcher"
    security = await anyio.to_thread.run_sync(_introduce, researcher_dir, root / "nodes", nodes)
    async with AsyncExitStack() as stack:
        for node in nodes:
            settings = NodeSettings(
                node_id=node, data_dir=root / "nodes" / node, namespace=topology.namespace,
                heartbeat_interval=0.5,
            )  # fmt: skip
            transport = await stack.enter_async_context(MemoryTransport(broker))
            await stack.enter_async_context(NodeAgent(settings, transport, shutdown_grace=1))
        transport = await stack.enter_async_context(MemoryTransport(broker))
        requests = await stack.enter_async_context(
            Requests(transport, SIMULATION_RESEARCHER, topology=topology, security=security)
        )
        await requests.wait_for_nodes(nodes, timeout=30)
        yield requests


def _introduce(researcher_dir: Path, root: Path, nodes: list[str]) -> Security:
    introduce(SIMULATION_RESEARCHER, researcher_dir, {node: root / node for node in nodes})
    return Security.load(
        researcher_dir / "identity", SIMULATION_RESEARCHER, "researcher",
        researcher_dir / "trusted-nodes",
    )  # fmt: skip


def operator(root: Path) -> Approver:
    """An approver acting as the operator of each node whose data folder is under ``root``
    (``node-agent plans approve``): for simulations and tests."""

    async def approve(node: str, plan_id: str) -> None:
        def run() -> None:
            with PlanRegistry(root / node) as plans:
                plans.approve(plan_id, note="approved by the simulation's operator")

        await anyio.to_thread.run_sync(run)

    return approve
