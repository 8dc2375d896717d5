"""``broker-net-demo``: the demo, and the demo data for a node agent.

- ``broker-net-demo run``: the federated demo end to end (what ``python -m simulation.demo``
  runs; see :mod:`simulation.demo`);
- ``broker-net-demo setup-node --shard N``: give a node its shard of the demo data, as its
  operator would register a dataset (docker-compose runs it before ``node-agent start``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from node_agent.settings import NodeSettings
from simulation.demo import main as run_demo
from simulation.demo_setup import register_demo_shard

app = typer.Typer(
    help="The broker-net demo: a federated run end to end, and the demo data for a node.",
    no_args_is_help=True,
    add_completion=False,
)
app.command("run")(run_demo)


@app.command("setup-node")
def setup_node(
    shard: Annotated[int, typer.Option(help="Which shard this node holds (0-based).")],
    shards: Annotated[int, typer.Option(help="How many nodes share the data.")] = 3,
    non_iid: Annotated[bool, typer.Option(help="Skew each shard's label mix.")] = False,
    data_dir: Annotated[
        Path | None, typer.Option(help="Data folder (env BROKER_NET_NODE_DATA_DIR).")
    ] = None,
) -> None:
    """Give this node its shard of scikit-learn's breast-cancer data, registered as a dataset
    tagged ``breast-cancer``. Running it again changes nothing."""
    default = NodeSettings.model_fields["data_dir"].default
    folder = data_dir or Path(os.environ.get("BROKER_NET_NODE_DATA_DIR", default))
    entry, created = register_demo_shard(folder, shard, shards, non_iid=non_iid)
    state = "registered" if created else "already had"
    typer.echo(f"{folder}: {state} {entry.dataset_id} ({entry.shape[0]} rows)")


def main() -> None:
    """Entry point."""
    app()
