"""``node-agent``: run a node agent and manage its datasets and training plans."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated, Any

import anyio
import typer

from broker_net.amqp.transport import AmqpTransport
from broker_net.crypto.cli import identity_commands
from broker_net.errors import TransportError
from node_agent.agent import NodeAgent
from node_agent.cli_dataset import dataset_app
from node_agent.cli_plans import plans_app
from node_agent.settings import NodeSettings

app = typer.Typer(
    help="Run a broker-net node agent and manage the datasets and training plans it serves.",
    no_args_is_help=True,
    add_completion=False,
)

app.add_typer(dataset_app, name="dataset")
app.add_typer(plans_app, name="plans")


def _locate_identity() -> tuple[str, Path, Path]:
    settings = NodeSettings()
    return settings.node_id, settings.identity_dir, settings.trust_path


_identity_app, _trust_app = identity_commands("node", _locate_identity)
app.add_typer(_identity_app, name="identity")
app.add_typer(_trust_app, name="trust")


@app.callback()
def _root() -> None:
    """Run a broker-net node agent and manage the datasets and training plans it serves."""


def load_settings(env_file: Path | None, **overrides: object) -> NodeSettings:
    """Settings from the environment (``BROKER_NET_NODE_*``), an env file, then overrides."""
    values: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
    return NodeSettings(_env_file=env_file, **values)


@app.command()
def start(
    node_id: Annotated[
        str | None, typer.Option(help="Node id (env BROKER_NET_NODE_NODE_ID).")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Data folder (env BROKER_NET_NODE_DATA_DIR).")
    ] = None,
    amqp_url: Annotated[
        str | None, typer.Option(help="RabbitMQ URL (env BROKER_NET_NODE_AMQP_URL).")
    ] = None,
    env_file: Annotated[
        Path | None, typer.Option(help="A .env file with BROKER_NET_NODE_* settings.")
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="DEBUG, INFO, WARNING...")] = None,
) -> None:
    """Consume this node's request queue and answer requests until SIGTERM or Ctrl-C.

    On SIGTERM the agent stops taking requests, lets running ones finish (up to 30 s) and
    gives the rest back to the broker, so nothing is lost.
    """
    settings = load_settings(
        env_file, node_id=node_id, data_dir=data_dir, amqp_url=amqp_url, log_level=log_level
    )
    settings.configure_logging()
    try:
        anyio.run(_serve, settings)
    except TransportError as exc:
        typer.echo(f"node-agent: cannot use the broker: {exc}", err=True)
        raise typer.Exit(2) from exc


async def _serve(settings: NodeSettings) -> None:
    async with (
        AmqpTransport(settings.amqp_url, connection_name=f"node:{settings.node_id}") as transport,
        NodeAgent(settings, transport) as agent,
        anyio.create_task_group() as group,
    ):
        group.start_soon(_stop_on_signal, agent)
        await agent.wait_ready()
        typer.echo(f"node {settings.node_id} ready", err=True)
        await agent.serve()
        group.cancel_scope.cancel()


async def _stop_on_signal(agent: NodeAgent) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            agent.stop()
            return


def main() -> None:
    """Entry point of ``python -m node_agent``."""
    app()
