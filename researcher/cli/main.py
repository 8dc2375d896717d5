"""``researcher``: talk to the network from a terminal.

A command that fails prints one line on stderr (a JSON object with ``--json``) and exits with
2 for a usage or input error, 1 for an operation that failed (see
:mod:`broker_net.cli_errors`).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import anyio
import typer
from rich import box
from rich.console import Console
from rich.table import Table

from broker_net.cli_errors import CliApp, CliError, guard
from researcher.cli.broker import connection, load_settings, session
from researcher.cli.dashboard import dashboard_command
from researcher.cli.jobs import job_app, output_app
from researcher.cli.security import identity_app, provision_command, trust_app
from researcher.cli.status import NodeStatus, collect_status
from researcher.requests.federated import FederatedRequest

app = CliApp(
    help="Drive a broker-net federation: nodes, status, jobs and their outputs.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


@app.command()
@guard
def status(
    as_json: JsonOption = False,
    listen: Annotated[
        float, typer.Option(help="Seconds to listen for heartbeats before reporting.")
    ] = 3.0,
) -> None:
    """Show every node: online or not, last heartbeat, queue depth, consumers, unacked
    messages and message rates. Exits with code 1 when a node is down or none is found."""
    settings = load_settings()

    async def run() -> list[NodeStatus]:
        async with connection(settings, "status") as transport:
            return await collect_status(settings, transport, listen=listen)

    statuses = anyio.run(run)
    if as_json:
        typer.echo(json.dumps([s.as_dict() for s in statuses], indent=2))
    elif not statuses:
        console.print(
            f"[red]No node in namespace {settings.namespace!r} on vhost {settings.vhost!r}: "
            "no node queue there and no heartbeat heard.[/red]"
        )
    else:
        console.print(_status_table(settings.namespace, statuses))
    if not statuses or any(not s.online for s in statuses):
        raise typer.Exit(1)


def _status_table(namespace: str, statuses: list[NodeStatus]) -> Table:
    """The nodes in 80 columns: short headers, explained in the caption."""
    table = Table(
        title=f"broker-net nodes in namespace {namespace!r}",
        caption="beat: seconds since the last heartbeat; pub/dlv/ack: messages per second",
        box=box.SIMPLE_HEAD, collapse_padding=True,
    )  # fmt: skip
    table.add_column("node", overflow="fold", min_width=10)
    for header, justify in (("online", "left"), ("beat", "right"), ("version", "left"),
                            ("queued", "right"), ("unacked", "right"), ("consumers", "right"),
                            ("pub/dlv/ack", "right")):  # fmt: skip
        table.add_column(header, no_wrap=True, justify=justify)  # type: ignore[arg-type]
    for s in statuses:
        table.add_row(
            s.node_id,
            "[green]yes[/green]" if s.online else "[red]DOWN[/red]",
            "-" if s.seconds_since_heartbeat is None else f"{s.seconds_since_heartbeat:.1f}",
            s.agent_version or "-",
            str(s.queue_depth), str(s.unacked), str(s.consumers),
            f"{s.publish_rate:.1f}/{s.deliver_rate:.1f}/{s.ack_rate:.1f}",
        )  # fmt: skip
    return table


@app.command()
@guard
def ping(
    nodes: Annotated[
        list[str] | None, typer.Argument(help="Node ids (default: all online).")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each node.")] = 5.0,
    as_json: JsonOption = False,
) -> None:
    """Ping nodes and show their round-trip times. Exits with code 1 when a node is silent
    or answers with an error (its code and reason are shown)."""
    settings = load_settings()
    listen = min(timeout, 3.0)

    async def run() -> dict[str, dict[str, Any]]:
        async with session(settings, purpose="ping", one_shot=True) as requests:
            if not nodes:
                await anyio.sleep(listen)
                if not requests.presence.online_ids():
                    raise CliError(
                        f"no node is online in namespace {settings.namespace!r} (no heartbeat "
                        f"in {listen:g} s); name the nodes to ping"
                    )
            return _ping_results(await requests.ping(nodes or None, timeout=timeout))

    results = anyio.run(run)
    if as_json:
        typer.echo(json.dumps(results, indent=2))
    else:
        table = Table(title="ping")
        for column in ("node", "status", "round trip (ms)", "processing (ms)", "reason"):
            table.add_column(column, overflow="fold")
        for node, row in results.items():
            rtt, proc = row["round_trip_ms"], row["processing_ms"]
            table.add_row(
                node, str(row["status"]),
                "-" if rtt is None else f"{rtt:.2f}", "-" if proc is None else f"{proc:.2f}",
                row["reason"] or "",
            )  # fmt: skip
        console.print(table)
    failed = {node: row for node, row in results.items() if row["status"] != "SUCCESS"}
    if failed:
        raise CliError(
            "; ".join(
                f"node {node} {row['status']}: {row['reason']}" for node, row in failed.items()
            )
        )


def _ping_results(fed: FederatedRequest) -> dict[str, dict[str, Any]]:
    statuses, errors, reasons = fed.status(), fed.errors(), fed.reasons()
    return {
        node: {
            "status": statuses[node].value,
            "round_trip_ms": None if t.round_trip is None else t.round_trip * 1000,
            "processing_ms": None if t.processing is None else t.processing * 1000,
            "error_code": errors[node].code.name if node in errors else None,
            "reason": reasons.get(node),
        }
        for node, t in fed.timings().items()
    }


app.add_typer(job_app, name="job")
app.add_typer(output_app, name="output")
app.add_typer(identity_app, name="identity")
app.add_typer(trust_app, name="trust")
app.command("provision")(guard(provision_command))
app.command("dashboard")(guard(dashboard_command))


def main() -> None:
    """Entry point."""
    app()
