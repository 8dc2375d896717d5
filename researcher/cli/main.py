"""``researcher``: talk to the network from a terminal."""

from __future__ import annotations

import json
from typing import Annotated

import anyio
import typer
from rich.console import Console
from rich.table import Table

from broker_net.amqp.transport import AmqpTransport
from broker_net.errors import TransportError
from researcher.cli.jobs import job_app, output_app
from researcher.cli.security import identity_app, provision_command, trust_app
from researcher.cli.status import NodeStatus, collect_status
from researcher.requests.router import Requests
from researcher.settings import ResearcherSettings

app = typer.Typer(
    help="Drive a broker-net federation: nodes, status, jobs and their outputs.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _settings() -> ResearcherSettings:
    settings = ResearcherSettings()
    settings.configure_logging()
    return settings


def _fail(exc: Exception) -> typer.Exit:
    console.print(f"[red]researcher: {exc}[/red]")
    return typer.Exit(2)


@app.command()
def status(
    as_json: JsonOption = False,
    listen: Annotated[
        float, typer.Option(help="Seconds to listen for heartbeats before reporting.")
    ] = 3.0,
) -> None:
    """Show every node: online or not, last heartbeat, queue depth, consumers, unacked
    messages and message rates. Exits with code 1 when a node is down or none is found."""
    settings = _settings()

    async def run() -> list[NodeStatus]:
        async with AmqpTransport(settings.amqp_url, connection_name="researcher:status") as t:
            return await collect_status(settings, t, listen=listen)

    try:
        statuses = anyio.run(run)
    except TransportError as exc:
        raise _fail(exc) from exc
    if as_json:
        typer.echo(json.dumps([s.as_dict() for s in statuses], indent=2))
    elif not statuses:
        console.print(
            f"[red]No node in namespace {settings.namespace!r} on vhost {settings.vhost!r}: "
            "no node queue there and no heartbeat heard.[/red]"
        )
    else:
        table = Table(title=f"broker-net nodes in namespace {settings.namespace!r}")
        for column in ("node", "online", "last heartbeat (s ago)", "version", "queued",
                       "consumers", "unacked", "publish/s", "deliver/s", "ack/s"):  # fmt: skip
            table.add_column(column)
        for s in statuses:
            table.add_row(
                s.node_id,
                "[green]yes[/green]" if s.online else "[red]DOWN[/red]",
                "-" if s.seconds_since_heartbeat is None else f"{s.seconds_since_heartbeat:.1f}",
                s.agent_version or "-",
                str(s.queue_depth), str(s.consumers), str(s.unacked),
                f"{s.publish_rate:.1f}", f"{s.deliver_rate:.1f}", f"{s.ack_rate:.1f}",
            )  # fmt: skip
        console.print(table)
    if not statuses or any(not s.online for s in statuses):
        raise typer.Exit(1)


@app.command()
def ping(
    nodes: Annotated[
        list[str] | None, typer.Argument(help="Node ids (default: all online).")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each node.")] = 5.0,
    as_json: JsonOption = False,
) -> None:
    """Ping nodes and show their round-trip times. Exits with code 1 when a node is silent."""
    settings = _settings()

    async def run() -> dict[str, dict[str, object]]:
        async with (
            AmqpTransport(settings.amqp_url, connection_name="researcher:ping") as transport,
            Requests(transport, settings.researcher_id, topology=settings.topology) as requests,
        ):
            if not nodes:
                await anyio.sleep(min(timeout, 3.0))
            fed = await requests.ping(nodes or None, timeout=timeout)
            return {
                node: {
                    "status": fed.status()[node].value,
                    "round_trip_ms": None if t.round_trip is None else t.round_trip * 1000,
                    "processing_ms": None if t.processing is None else t.processing * 1000,
                }
                for node, t in fed.timings().items()
            }

    try:
        results = anyio.run(run)
    except TransportError as exc:
        raise _fail(exc) from exc
    if as_json:
        typer.echo(json.dumps(results, indent=2))
    else:
        table = Table(title="ping")
        for column in ("node", "status", "round trip (ms)", "processing (ms)"):
            table.add_column(column)
        for node, row in results.items():
            rtt, proc = row["round_trip_ms"], row["processing_ms"]
            table.add_row(
                node, str(row["status"]),
                "-" if rtt is None else f"{rtt:.2f}", "-" if proc is None else f"{proc:.2f}",
            )  # fmt: skip
        console.print(table)
    if not results or any(row["status"] != "SUCCESS" for row in results.values()):
        raise typer.Exit(1)


app.add_typer(job_app, name="job")
app.add_typer(output_app, name="output")
app.add_typer(identity_app, name="identity")
app.add_typer(trust_app, name="trust")
app.command("provision")(provision_command)


def main() -> None:
    """Entry point."""
    app()
