"""``node-agent``: run a node agent and manage its datasets and training plans.

A command that fails prints one line on stderr (a JSON object with ``--json``) and exits with
2 for a usage or input error, 1 for an operation that failed (see
:mod:`broker_net.cli_errors`).
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated, Any

import anyio
import typer

from broker_net.cli_broker import broker_connection
from broker_net.cli_errors import CliApp, guard, read_settings
from broker_net.crypto.cli import identity_commands
from node_agent.agent import NodeAgent
from node_agent.cli_dataset import dataset_app
from node_agent.cli_plans import plans_app
from node_agent.settings import NodeSettings

app = CliApp(
    help="Run a broker-net node agent and manage the datasets and training plans it serves.",
    no_args_is_help=True,
    add_completion=False,
)

app.add_typer(dataset_app, name="dataset")
app.add_typer(plans_app, name="plans")


def _locate_identity() -> tuple[str, Path, Path]:
    settings = read_settings(NodeSettings)
    return settings.node_id, settings.identity_dir, settings.trust_path


_identity_app, _trust_app = identity_commands("node", _locate_identity)
app.add_typer(_identity_app, name="identity")
app.add_typer(_trust_app, name="trust")


@app.callback()
def _root() -> None:
    """Run a broker-net node agent and manage the datasets and training plans it serves."""


OPTIONS = {"node_id": "--node-id", "data_dir": "--data-dir", "amqp_url": "--amqp-url",
           "log_level": "--log-level"}  # fmt: skip
"""The settings ``start`` takes as options, named in its errors."""


def load_settings(env_file: Path | None, **overrides: object) -> NodeSettings:
    """Settings from the environment (``BROKER_NET_NODE_*``), an env file, then overrides.

    Raises:
        CliError: a setting is missing or invalid (named with its variable and option).
    """
    values: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
    return read_settings(NodeSettings, options=OPTIONS, _env_file=env_file, **values)


@app.command()
@guard
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
        Path | None,
        typer.Option(
            help="A .env file with BROKER_NET_NODE_* settings.", exists=True, dir_okay=False
        ),
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
    anyio.run(_serve, settings)


async def _serve(settings: NodeSettings) -> None:
    # No patience: a node agent rides out any broker outage, reconnecting until it stops.
    async with (
        broker_connection(
            settings.amqp_url,
            name=f"node:{settings.node_id}",
            setting="BROKER_NET_NODE_AMQP_URL (or --amqp-url)",
        ) as transport,
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
