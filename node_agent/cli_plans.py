"""``node-agent plans``: review the training plans researchers submitted to this node."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.syntax import Syntax
from rich.table import Table as RichTable

from broker_net.cli_errors import USAGE, CliError, guard
from broker_net.codes import TrainingPlanStatus
from node_agent.cli_dataset import DEFAULT_DATA_DIR, DataDir
from node_agent.plans import PlanNotFoundError, PlanRegistry

plans_app = typer.Typer(
    help="Review training plans: list them, read their source, approve or reject them.",
    no_args_is_help=True,
    add_completion=False,
)

_STATUSES = {
    "pending": TrainingPlanStatus.PENDING,
    "approved": TrainingPlanStatus.APPROVED,
    "rejected": TrainingPlanStatus.REJECTED,
}
_out = Console()

PlanId = Annotated[
    str, typer.Argument(help="The plan's id as shown by 'plans list', or its first 6+ characters.")
]
Note = Annotated[str, typer.Option(help="Why, kept with the plan.")]


def _fail(message: str) -> CliError:
    """An input error: a bad file, an unknown id or status (exit code 2)."""
    return CliError(message, USAGE)


@plans_app.command("list")
@guard
def list_plans(
    status: Annotated[
        str | None, typer.Option(help="Only plans with this status: pending, approved, rejected.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """List the training plans researchers submitted, oldest first."""
    wanted = None
    if status is not None:
        if status.lower() not in _STATUSES:
            raise _fail(f"unknown status {status!r}; use pending, approved or rejected")
        wanted = _STATUSES[status.lower()]
    with PlanRegistry(data_dir) as registry:
        records = registry.list(wanted)
    if as_json:
        rows = [{k: v for k, v in asdict(r).items() if k != "source"} for r in records]
        typer.echo(json.dumps(rows, indent=2, default=str))
    elif records:
        table = RichTable()
        table.add_column("id", no_wrap=True, min_width=16)
        for header in ("status", "researcher", "registered", "description"):
            table.add_column(header)
        for record in records:
            table.add_row(
                record.plan_id[:16],
                _styled(record.status),
                record.researcher_id,
                record.registered_at[:19],
                record.description,
            )
        _out.print(table)
    else:
        _out.print("No training plans.")


@plans_app.command("show")
@guard
def show(
    plan_id: PlanId,
    source: Annotated[bool, typer.Option(help="Print the plan's source code.")] = True,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Show a plan's status, metadata and source code: read it before approving it."""
    with PlanRegistry(data_dir) as registry:
        try:
            record = registry.show(plan_id)
        except PlanNotFoundError as exc:
            raise _fail(str(exc)) from None
    table = RichTable(show_header=False)
    for label, value in (
        ("id", record.plan_id),
        ("status", _styled(record.status)),
        ("researcher", record.researcher_id),
        ("description", record.description),
        ("note", record.note),
        ("registered", record.registered_at),
        ("updated", record.updated_at),
    ):
        table.add_row(label, value)
    _out.print(table)
    if source:
        _out.print(Syntax(record.source, "python", line_numbers=True))


@plans_app.command("approve")
@guard
def approve(plan_id: PlanId, note: Note = "", data_dir: DataDir = DEFAULT_DATA_DIR) -> None:
    """Approve a plan: researchers may then train it on this node's data."""
    _set(plan_id, TrainingPlanStatus.APPROVED, note, data_dir)


@plans_app.command("reject")
@guard
def reject(plan_id: PlanId, note: Note = "", data_dir: DataDir = DEFAULT_DATA_DIR) -> None:
    """Reject a plan: it will never run on this node (unless approved later)."""
    _set(plan_id, TrainingPlanStatus.REJECTED, note, data_dir)


def _set(plan_id: str, status: TrainingPlanStatus, note: str, data_dir: Path) -> None:
    with PlanRegistry(data_dir) as registry:
        try:
            if status is TrainingPlanStatus.APPROVED:
                record = registry.approve(plan_id, note)
            else:
                record = registry.reject(plan_id, note)
        except PlanNotFoundError as exc:
            raise _fail(str(exc)) from None
    _out.print(f"{record.plan_id}: {_styled(record.status)}")


def _styled(status: TrainingPlanStatus) -> str:
    colour = {"Approved": "green", "Rejected": "red"}.get(status.value, "yellow")
    return f"[{colour}]{status.value}[/{colour}]"
