"""``node-agent dataset``: register, list and remove the datasets a node serves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table as RichTable

from broker_net.cli_errors import USAGE, CliError, guard
from node_agent.datasets import (
    DataLoadingError,
    DatasetEntry,
    DatasetNotFoundError,
    DatasetRegistry,
)
from node_agent.settings import NodeSettings

DEFAULT_DATA_DIR: Path = NodeSettings.model_fields["data_dir"].default
"""The data folder when neither ``--data-dir`` nor ``BROKER_NET_NODE_DATA_DIR`` is set."""

DataDir = Annotated[
    Path,
    typer.Option(
        "--data-dir",
        envvar="BROKER_NET_NODE_DATA_DIR",
        help="The node's data folder, holding datasets.sqlite.",
        file_okay=False,
    ),
]

dataset_app = typer.Typer(
    help="Register, list and remove the datasets this node serves to researchers.",
    no_args_is_help=True,
    add_completion=False,
)

_out = Console()


def _fail(message: str) -> CliError:
    """An input error: a bad file, an unknown id or status (exit code 2)."""
    return CliError(message, USAGE)


@dataset_app.command("add")
@guard
def add(
    path: Annotated[
        Path,
        typer.Argument(
            help="A .csv file (header row), a 2-D .npy array, or an .npz with X, optional y "
            "and optional columns.",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ],
    name: Annotated[
        str | None, typer.Option(help="Display name; the file name without suffix by default.")
    ] = None,
    tag: Annotated[
        list[str] | None,
        typer.Option("--tag", "-t", help="A tag researchers select the dataset by; repeatable."),
    ] = None,
    description: Annotated[str, typer.Option(help="Free text shown to researchers.")] = "",
    target: Annotated[
        str | None,
        typer.Option(help="The column training plans predict ('y' by default for .npz with y)."),
    ] = None,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Register a data file. Only its description is shared; the data never leaves the node."""
    with DatasetRegistry(data_dir) as registry:
        try:
            entry = registry.add(
                path, name=name, tags=tag or [], description=description, target=target
            )
        except DataLoadingError as exc:
            raise _fail(str(exc)) from None
    _out.print(f"Added [bold]{entry.dataset_id}[/bold] from {entry.path}", highlight=False)
    _out.print(_table([entry]))


@dataset_app.command("list")
@guard
def list_datasets(
    tag: Annotated[
        list[str] | None,
        typer.Option("--tag", "-t", help="Only datasets carrying this tag; repeatable."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """List the registered datasets, optionally only those carrying every given tag.

    The table shows ids, names, shapes, targets, tags and provenance; --json adds columns,
    dtypes and paths.
    """
    with DatasetRegistry(data_dir) as registry:
        entries = registry.list(tag or [])
    if as_json:
        typer.echo(json.dumps([_as_json(entry) for entry in entries], indent=2))
    elif entries:
        _out.print(_table(entries))
    else:
        _out.print("No datasets.")


@dataset_app.command("remove")
@guard
def remove(
    dataset_id: Annotated[str, typer.Argument(help="The id shown by 'dataset list'.")],
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Unregister a dataset. Its file is left untouched."""
    with DatasetRegistry(data_dir) as registry:
        try:
            registry.remove(dataset_id)
        except DatasetNotFoundError as exc:
            raise _fail(str(exc)) from None
    _out.print(f"Removed {dataset_id}", highlight=False)


def _as_json(entry: DatasetEntry) -> dict[str, object]:
    return {**entry.to_info().model_dump(), "path": str(entry.path), "target": entry.target,
            "provenance": entry.provenance}  # fmt: skip


def _table(entries: list[DatasetEntry]) -> RichTable:
    table = RichTable()
    table.add_column("id", no_wrap=True, min_width=len("dataset_") + 32)
    for header in ("name", "shape", "target", "tags", "provenance"):
        table.add_column(header, overflow="fold")
    for entry in entries:
        table.add_row(
            entry.dataset_id,
            entry.name,
            " x ".join(str(n) for n in entry.shape),
            entry.target or "",
            ", ".join(entry.tags),
            _provenance(entry.provenance),
        )
    return table


def _provenance(made: dict[str, object] | None) -> str:
    """Where a dataset the node made comes from, in one line; empty for an operator's."""
    if not made:
        return ""
    return (f"predictions on {made.get('source_dataset')} by {made.get('model')} of job "
            f"{made.get('job_id')} (plan {str(made.get('plan_id'))[:12]}, request "
            f"{made.get('request_id')}, {made.get('created_at')})")  # fmt: skip
