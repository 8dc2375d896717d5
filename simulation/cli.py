"""``broker-net-demo``: the demo, and the demo data for a node agent.

- ``broker-net-demo run``: the federated demo end to end (what ``python -m simulation.demo``
  runs; see :mod:`simulation.demo`);
- ``broker-net-demo setup-node --shard N``: give a node its shard of the demo data, as its
  operator would register a dataset (docker-compose runs it before ``node-agent start``).

Errors are one line on stderr (see :mod:`broker_net.cli_errors`).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Annotated, Any

import anyio
import typer

from broker_net.cli_broker import broker_connection
from broker_net.cli_errors import USAGE, CliApp, CliError, guard
from node_agent.settings import NodeSettings
from simulation.demo import main as run_demo
from simulation.demo_setup import register_demo_shard

app = CliApp(
    help="The broker-net demo: a federated run end to end, and the demo data for a node.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command("run")
@guard
@functools.wraps(run_demo)
def run(**options: Any) -> None:
    """Run the broker-net demo end to end."""
    if not options.get("simulate"):
        # Reach the broker first, so a wrong URL or password is said plainly, before any
        # node agent starts.
        anyio.run(_reach, str(options["amqp_url"]))
    run_demo(**options)


async def _reach(url: str) -> None:
    async with broker_connection(
        url, name="researcher:demo-check", setting="BROKER_NET_RESEARCHER_AMQP_URL (or --amqp-url)"
    ):
        pass


@app.command("setup-node")
@guard
def setup_node(
    shard: Annotated[int, typer.Option(help="Which shard this node holds (0-based).", min=0)],
    shards: Annotated[int, typer.Option(help="How many nodes share the data.", min=1)] = 3,
    non_iid: Annotated[bool, typer.Option(help="Skew each shard's label mix.")] = False,
    data_dir: Annotated[
        Path | None, typer.Option(help="Data folder (env BROKER_NET_NODE_DATA_DIR).")
    ] = None,
) -> None:
    """Give this node its shard of scikit-learn's breast-cancer data, registered as a dataset
    tagged ``breast-cancer``. Running it again changes nothing."""
    default = NodeSettings.model_fields["data_dir"].default
    folder = data_dir or Path(os.environ.get("BROKER_NET_NODE_DATA_DIR", default))
    if shard >= shards:
        raise CliError(
            f"there is no shard {shard} of {shards}; use --shard 0 to {shards - 1}", USAGE
        )
    entry, created = register_demo_shard(folder, shard, shards, non_iid=non_iid)
    state = "registered" if created else "already had"
    typer.echo(f"{folder}: {state} {entry.dataset_id} ({entry.shape[0]} rows)")


def main() -> None:
    """Entry point."""
    app()
