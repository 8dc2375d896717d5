"""The demo: three node agents and a researcher, a federated run end to end.

``python -m simulation.demo`` (or ``broker-net-demo run``) gives three node agent processes
their shard of the breast-cancer data, starts them against the local RabbitMQ and drives them
from async researcher code: the training plan goes through approval, then federated analytics,
federated standardisation and FedAvg rounds, ending with the federated model's test accuracy
next to a centrally trained one. ``--simulate`` runs the same story in one process on the in-memory
transport; ``--external-nodes`` drives node agents started elsewhere (docker-compose);
``--secagg`` runs the FedAvg rounds with secure aggregation.

The run is recorded as a job of the researcher's job store in the demo's researcher data
folder (:mod:`simulation.demo_record`); ``--dashboard`` serves ``researcher dashboard`` on it
beside the demo (:mod:`simulation.demo_dashboard`) and prints its URL.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Annotated

import anyio
import typer
from rich.console import Console

from broker_net.amqp.transport import AmqpTransport
from broker_net.crypto.authentication import Security
from broker_net.crypto.introductions import introduce
from broker_net.memory import MemoryBroker, MemoryTransport
from broker_net.topology import Topology
from node_agent.agent import NodeAgent
from node_agent.plans import PlanRegistry
from node_agent.settings import NodeSettings
from researcher.requests.router import Requests
from simulation.demo_dashboard import demo_dashboard
from simulation.demo_record import DemoRecord
from simulation.demo_setup import register_demo_shard
from simulation.demo_story import TRAINING_ARGS, StoryResult, tell

NODES = ("hospital-a", "hospital-b", "hospital-c")
RESEARCHER = os.environ.get("BROKER_NET_RESEARCHER_RESEARCHER_ID", "demo-researcher")
console = Console()


@asynccontextmanager
async def _node_processes(amqp_url: str, namespace: str, folder: Path) -> AsyncIterator[None]:
    processes = []
    for node in NODES:
        env = dict(os.environ)
        env.update(
            BROKER_NET_NODE_NODE_ID=node,
            BROKER_NET_NODE_DATA_DIR=str(folder / node),
            BROKER_NET_NODE_AMQP_URL=amqp_url,
            BROKER_NET_NODE_NAMESPACE=namespace,
            BROKER_NET_NODE_HEARTBEAT_INTERVAL="0.5",
        )
        processes.append(
            subprocess.Popen(  # noqa: ASYNC220 (spawning returns at once)
                [sys.executable, "-m", "node_agent", "start"],
                env=env,
                stdout=subprocess.DEVNULL,
            )
        )
    try:
        yield
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                await anyio.to_thread.run_sync(process.wait, 35)
            except subprocess.TimeoutExpired:
                process.kill()


@asynccontextmanager
async def _in_process_nodes(
    broker: MemoryBroker, namespace: str, folder: Path
) -> AsyncIterator[None]:
    async with AsyncExitStack() as stack:
        for node in NODES:
            settings = NodeSettings(
                node_id=node, data_dir=folder / node, namespace=namespace, heartbeat_interval=0.5
            )
            transport = await stack.enter_async_context(MemoryTransport(broker))
            await stack.enter_async_context(NodeAgent(settings, transport))
        yield


def _operator(root: Path):  # type: ignore[no-untyped-def]
    """Approve a plan on a node as its operator would (``node-agent plans approve ID``)."""

    async def approve(node: str, plan_id: str) -> None:
        def run() -> None:
            with PlanRegistry(root / node) as plans:
                plans.approve(plan_id, note="reviewed by the demo operator")

        await anyio.to_thread.run_sync(run)
        console.print(f"   operator of {node}: node-agent plans approve {plan_id[:12]}")

    return approve


async def run(
    *,
    simulate: bool,
    amqp_url: str,
    namespace: str,
    rounds: int,
    non_iid: bool,
    external_nodes: list[str] | None = None,
    node_data_root: Path | None = None,
    secagg: bool = False,
    dashboard: bool = False,
    researcher_dir: Path | None = None,
) -> StoryResult:
    """Run the demo story and return its figures; with ``dashboard``, serve the dashboard
    beside it and, once the story is told, until cancelled (Ctrl-C).

    Args:
        researcher_dir: the researcher's data folder (keys, the job store); default: one in
            a temporary folder removed at the end.
    """
    mode = "SIMULATION on the in-memory transport" if simulate else f"RabbitMQ at {_safe(amqp_url)}"
    console.rule(f"broker-net demo: {mode}")
    nodes = list(external_nodes or NODES)
    broker = MemoryBroker()
    with tempfile.TemporaryDirectory(prefix="broker-net-demo-") as tmp:
        root = node_data_root or Path(tmp)
        researcher_dir = researcher_dir or Path(tmp) / RESEARCHER
        async with AsyncExitStack() as stack:
            if external_nodes is not None:
                with console.status("waiting for the node agents' identities..."):
                    await _wait_for_identities(root, nodes)
            security = await anyio.to_thread.run_sync(_introduce, researcher_dir, root, nodes)
            record = stack.enter_context(
                DemoRecord(researcher_dir, RESEARCHER, rounds=rounds,
                           training_args=TRAINING_ARGS, secagg=secagg)
            )  # fmt: skip
            url = None
            if dashboard:
                url = await stack.enter_async_context(
                    demo_dashboard(researcher_dir, amqp_url=amqp_url, namespace=namespace,
                                   researcher_id=RESEARCHER)
                )  # fmt: skip
                print(f"dashboard: {url}", flush=True)
            transport: MemoryTransport | AmqpTransport = MemoryTransport(broker)
            if not simulate:  # connected first: a broker it cannot reach fails the demo at once
                transport = AmqpTransport(amqp_url, connection_name="researcher:demo")
                await stack.enter_async_context(transport)
            if external_nodes is None:
                for index, node in enumerate(NODES):
                    await anyio.to_thread.run_sync(
                        partial(
                            register_demo_shard, root / node, index, len(NODES), non_iid=non_iid
                        )
                    )
                if simulate:
                    await stack.enter_async_context(_in_process_nodes(broker, namespace, root))
                else:
                    await stack.enter_async_context(_node_processes(amqp_url, namespace, root))
            if simulate:
                await stack.enter_async_context(transport)
            requests = await stack.enter_async_context(
                Requests(transport, RESEARCHER, topology=Topology(namespace), security=security)
            )
            with console.status(f"waiting for node agents {', '.join(nodes)}..."):
                await requests.wait_for_nodes(nodes, timeout=90)
            result = await tell(
                requests, nodes, _operator(root), console, record, rounds=rounds, secagg=secagg
            )
            record.finish()
            if url is not None:
                console.print("the dashboard keeps showing the demo's job until Ctrl-C:")
                print(f"dashboard: {url}", flush=True)
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        break
            return result


def _introduce(researcher_dir: Path, root: Path, nodes: list[str]) -> Security:
    """The operators' key exchange: each node trusts the researcher, the researcher each node."""
    fingerprints = introduce(RESEARCHER, researcher_dir, {node: root / node for node in nodes})
    console.print(
        "0. Trust: every message is authenticated. Fingerprints: "
        + ", ".join(f"{party} {fp[:14]}" for party, fp in fingerprints.items())
    )
    return Security.load(
        researcher_dir / "identity", RESEARCHER, "researcher", researcher_dir / "trusted-nodes"
    )


async def _wait_for_identities(root: Path, nodes: list[str]) -> None:
    with anyio.fail_after(90):
        while not all((root / n / "identity" / "identity.pub").exists() for n in nodes):  # noqa: ASYNC110
            await anyio.sleep(0.2)


def _first_failure(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        errors = [e for e in exc.exceptions if not isinstance(e, asyncio.CancelledError)]
        exc = (errors or list(exc.exceptions))[0]
    return exc


def _safe(url: str) -> str:
    return url.split("@")[-1] if "@" in url else url


def main(
    simulate: Annotated[
        bool, typer.Option(help="Run on the in-memory transport instead of RabbitMQ.")
    ] = False,
    amqp_url: Annotated[
        str, typer.Option(envvar="BROKER_NET_RESEARCHER_AMQP_URL", help="RabbitMQ URL.")
    ] = "amqp://guest:guest@127.0.0.1:5672/",
    namespace: Annotated[
        str, typer.Option(envvar="BROKER_NET_RESEARCHER_NAMESPACE", help="Name prefix.")
    ] = "demo",
    rounds: Annotated[int, typer.Option(help="FedAvg rounds.")] = 10,
    non_iid: Annotated[bool, typer.Option(help="Skew each node's label mix.")] = False,
    external_nodes: Annotated[
        str | None,
        typer.Option(help="Comma-separated ids of node agents started elsewhere."),
    ] = None,
    node_data_root: Annotated[
        Path | None,
        typer.Option(help="With --external-nodes: folder holding each node's data folder."),
    ] = None,
    secagg: Annotated[
        bool, typer.Option(help="Aggregate with secure aggregation: only masked updates travel.")
    ] = False,
    dashboard: Annotated[
        bool,
        typer.Option(
            help="Serve the dashboard on 127.0.0.1 beside the demo and print its URL; it "
            "keeps serving after the demo until Ctrl-C."
        ),
    ] = False,
) -> None:
    """Run the broker-net demo end to end."""
    started = time.monotonic()
    nodes = [n.strip() for n in external_nodes.split(",") if n.strip()] if external_nodes else None
    if nodes is not None and node_data_root is None:
        raise typer.BadParameter("--external-nodes needs --node-data-root to approve the plan")
    try:
        anyio.run(
            lambda: run(
                simulate=simulate, amqp_url=amqp_url, namespace=namespace, rounds=rounds,
                non_iid=non_iid, external_nodes=nodes, node_data_root=node_data_root,
                secagg=secagg, dashboard=dashboard,
            )
        )  # fmt: skip
    except KeyboardInterrupt:
        if not dashboard:
            raise
        console.print("dashboard stopped")
        return
    except Exception as exc:  # one line, as every command reports its failure
        failure = _first_failure(exc)
        hint = "" if simulate else "; `broker-net-demo run --simulate` runs it without a broker"
        message = " ".join(f"{type(failure).__name__}: {failure}".split())
        typer.echo(f"error: the demo failed: {message}{hint}", err=True)
        raise typer.Exit(1) from None
    console.print(f"demo finished in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    typer.run(main)
