"""The demo: three node agents and a researcher, end to end.

``python -m researcher.demo`` starts three node agent processes against the local RabbitMQ and
drives them from async researcher code. ``--simulate`` runs the same story in one process on the
in-memory transport, for machines without a broker.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Annotated

import anyio
import typer
from rich.console import Console
from rich.table import Table

from broker_net.amqp import AmqpTransport
from broker_net.errors import TransportError
from broker_net.memory import MemoryBroker, MemoryTransport
from broker_net.topology import Topology
from node_agent.agent import NodeAgent
from node_agent.settings import NodeSettings
from researcher.requests import Requests

NODES = ("hospital-a", "hospital-b", "hospital-c")
NAMESPACE = "demo"
console = Console()


@asynccontextmanager
async def _node_processes(amqp_url: str, folder: Path) -> AsyncIterator[None]:
    processes = []
    for node in NODES:
        env = dict(os.environ)
        env.update(
            BROKER_NET_NODE_NODE_ID=node,
            BROKER_NET_NODE_DATA_DIR=str(folder / node),
            BROKER_NET_NODE_AMQP_URL=amqp_url,
            BROKER_NET_NODE_NAMESPACE=NAMESPACE,
            BROKER_NET_NODE_HEARTBEAT_INTERVAL="0.5",
        )
        processes.append(
            subprocess.Popen(  # noqa: ASYNC220 (spawning returns at once)
                [sys.executable, "-m", "node_agent", "start"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    try:
        yield
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=35)
            except subprocess.TimeoutExpired:
                process.kill()


@asynccontextmanager
async def _in_process_nodes(broker: MemoryBroker, folder: Path) -> AsyncIterator[None]:
    async with AsyncExitStack() as stack:
        for node in NODES:
            settings = NodeSettings(
                node_id=node, data_dir=folder / node, namespace=NAMESPACE, heartbeat_interval=0.5
            )
            transport = await stack.enter_async_context(MemoryTransport(broker))
            await stack.enter_async_context(NodeAgent(settings, transport))
        yield


async def run(simulate: bool, amqp_url: str) -> None:
    """Run the demo story."""
    mode = "SIMULATION on the in-memory transport" if simulate else f"RabbitMQ at {amqp_url}"
    console.rule(f"broker-net demo: {mode}")
    broker = MemoryBroker()
    with tempfile.TemporaryDirectory(prefix="broker-net-demo-") as tmp:
        folder = Path(tmp)
        async with AsyncExitStack() as stack:
            if simulate:
                await stack.enter_async_context(_in_process_nodes(broker, folder))
                transport: MemoryTransport | AmqpTransport = MemoryTransport(broker)
            else:
                await stack.enter_async_context(_node_processes(amqp_url, folder))
                transport = AmqpTransport(amqp_url, connection_name="researcher:demo")
            await stack.enter_async_context(transport)
            requests = await stack.enter_async_context(
                Requests(transport, "demo-researcher", topology=Topology(NAMESPACE))
            )
            with console.status("waiting for the three node agents..."):
                await requests.wait_for_nodes(NODES, timeout=60)
            await _ping_story(requests)


async def _ping_story(requests: Requests) -> None:
    table = Table(title="Ping through the broker")
    for column in ("node", "status", "round trip (ms)", "node processing (ms)",
                   "queue + transit (ms)"):  # fmt: skip
        table.add_column(column)
    fed = await requests.ping(list(NODES), timeout=10)
    for node, timing in fed.timings().items():
        table.add_row(
            node, fed.status()[node].value, _ms(timing.round_trip), _ms(timing.processing),
            _ms(timing.queue_and_transit),
        )  # fmt: skip
    console.print(table)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.2f}"


def main(
    simulate: Annotated[
        bool, typer.Option(help="Run on the in-memory transport instead of RabbitMQ.")
    ] = False,
    amqp_url: Annotated[
        str, typer.Option(envvar="BROKER_NET_RESEARCHER_AMQP_URL", help="RabbitMQ URL.")
    ] = "amqp://guest:guest@127.0.0.1:5672/",
) -> None:
    """Run the broker-net demo end to end."""
    started = time.monotonic()
    try:
        anyio.run(run, simulate, amqp_url)
    except TransportError as exc:
        console.print(f"[red]The broker failed us: {exc}[/red]")
        console.print("Run `python -m researcher.demo --simulate` to see the simulation.")
        raise typer.Exit(2) from exc
    console.print(f"demo finished in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    typer.run(main)
