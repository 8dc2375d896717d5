"""``researcher job ...`` and ``researcher output ...``: run job specs and read their outputs.

Two typer apps, mounted on the ``researcher`` command; ``python -m researcher.cli.jobs`` runs
them alone. Every command reads ``BROKER_NET_RESEARCHER_*`` settings; jobs live in the store
in ``data_dir``. Each command takes ``--json``. Exit codes: 0 done (the job succeeded); 1 the
job ended in another state, or the broker failed; 2 the command was wrong (unknown job or
task, bad spec, a job in the wrong state); errors are one line (:mod:`broker_net.cli_errors`).
A job is stored once the broker answers, and one a failed command could not start is marked
failed: no later command runs it unasked.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import anyio
import typer
from pydantic import ValidationError
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from broker_net.cli_errors import USAGE, CliApp, CliError, explain, guard, validation_summary
from broker_net.message_base import new_id
from researcher.cli.broker import load_settings, session
from researcher.orchestration import outputs
from researcher.orchestration.lifecycle import State
from researcher.orchestration.scheduler import Scheduler, cancel_unfinished, stop_job
from researcher.orchestration.spec import JobSpec
from researcher.orchestration.store.job_store import JobStore
from researcher.orchestration.store.records import JobNotFoundError, this_process
from researcher.orchestration.task_specs import SpecError
from researcher.orchestration.trained_models import check_model_refs
from researcher.settings import ResearcherSettings

job_app = typer.Typer(
    help="Submit job specs, follow them, stop, rerun and resume them.",
    no_args_is_help=True,
    add_completion=False,
)
output_app = typer.Typer(
    help="A job's outputs: metrics, models, task data and plots.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
T = TypeVar("T")

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
JobArgument = Annotated[str, typer.Argument(help="The job id.")]
TaskOption = Annotated[str | None, typer.Option("--task", help="Only this task.")]


def _with_store(action: Callable[[JobStore, ResearcherSettings], T]) -> T:
    settings = load_settings()
    try:
        with JobStore(settings.data_dir) as store:
            return action(store, settings)
    except SpecError as exc:
        raise CliError(_spec_problem(exc), USAGE) from None
    except (JobNotFoundError, outputs.OutputError, ValueError) as exc:
        raise CliError(str(exc), USAGE) from None


def _spec_problem(exc: SpecError) -> str:
    cause = exc.__cause__
    if isinstance(cause, ValidationError):
        return f"invalid job spec: {validation_summary(cause, exc.document)}"
    if isinstance(cause, OSError):
        return f"cannot read the job spec {cause.filename}: {(cause.strerror or '').lower()}"
    return str(exc)


def _with_scheduler(
    settings: ResearcherSettings,
    store: JobStore,
    work: Callable[[Scheduler], Awaitable[T]],
    job_id: Callable[[], str | None] = lambda: None,
    queued_here: bool = True,
) -> T:
    """Connect to the broker as this researcher and run ``work`` with a scheduler.

    When it fails, the job ``job_id()`` names is left as no later command picks it up unasked:
    one this command queued (``queued_here``) and could not start is marked failed; one that
    was running waits for ``job resume``. The error says which.
    """

    async def run() -> T:
        async with session(settings, purpose=f"{settings.researcher_id}:jobs") as requests:
            return await work(Scheduler(store, requests))

    try:
        return anyio.run(run)
    except Exception as exc:
        error = explain(exc)
        settled = _settle(store, job_id(), error, queued_here)
        raise CliError(error.message + settled, error.code) from None


def _settle(store: JobStore, job_id: str | None, error: CliError, queued_here: bool) -> str:
    """Leave job ``job_id`` as no later command picks up unasked; say what became of it."""
    if job_id is None:
        return ""
    job = store.job(job_id)
    mine = job.owner in (None, this_process()) or job.orphaned
    if queued_here and job.state is State.WAITING and mine:
        cancel_unfinished(store, job_id, "the command failed", job_state=State.FAILED,
                          job_reason=f"not started: {error.message}")  # fmt: skip
        return f"; job {job_id} did not start (failed; `researcher job rerun {job_id}` retries)"
    if job.state is State.RUNNING:
        return f"; job {job_id} is kept: `researcher job resume {job_id}` continues it"
    return ""


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


def _finish(store: JobStore, job_id: str, as_json: bool) -> None:
    """Print the job's status; unless it succeeded, fail (exit 1) with its state and reason."""
    status = outputs.job_status(store, job_id)
    if as_json:
        _print_json(status)
    else:
        _print_status(status)
    if status["state"] != State.SUCCESS.value:
        raise CliError(f"job {job_id} ended {status['state']}: {status['reason']}")


@job_app.command("submit")
@guard
def submit(
    spec_path: Annotated[Path, typer.Argument(help="The job spec (YAML).", metavar="SPEC")],
    queue_only: Annotated[
        bool, typer.Option("--queue-only", help="Store the job, waiting, and return.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Submit a job spec and run the queue until it is empty: waiting jobs run by priority,
    this one included. Exits 1 when this job does not succeed."""

    def action(store: JobStore, settings: ResearcherSettings) -> None:
        spec = check_model_refs(store, JobSpec.load(spec_path))
        if queue_only:
            reason = "queued; it runs when a scheduler runs the queue (`researcher job submit`)"
            job = store.create_job(spec, researcher_id=settings.researcher_id, reason=reason)
            if as_json:
                _print_json(job.as_dict())
            else:
                _submitted(job.job_id, spec.name)
            return
        created: list[str] = []

        async def work(scheduler: Scheduler) -> None:
            # Stored once the broker answered, so a broker it cannot reach stores nothing.
            created.append(scheduler.submit(spec).job_id)
            if not as_json:
                _submitted(created[0], spec.name)
            await scheduler.run_queue()

        _with_scheduler(settings, store, work, lambda: created[0] if created else None)
        _finish(store, created[0], as_json)

    _with_store(action)


def _submitted(job_id: str, name: str) -> None:
    typer.echo(f"job {job_id} submitted ({name})")


@job_app.command("resume")
@guard
def resume(job_id: JobArgument, as_json: JsonOption = False) -> None:
    """Continue a job whose process died (same researcher id, so the same reply queue): the
    replies that waited in the queue are consumed and the job finishes where it was."""

    def action(store: JobStore, settings: ResearcherSettings) -> None:
        job = store.job(job_id)
        if job.state.finished:
            raise ValueError(f"job {job_id} is {job.state.value}: nothing to resume")
        if job.researcher_id != settings.researcher_id:
            raise ValueError(
                f"job {job_id} was sent by researcher {job.researcher_id!r}; resume it with "
                f"BROKER_NET_RESEARCHER_RESEARCHER_ID={job.researcher_id} to read its replies"
            )
        _with_scheduler(
            settings, store, lambda s: s.resume(job_id), lambda: job_id, queued_here=False
        )
        _finish(store, job_id, as_json)

    _with_store(action)


@job_app.command("rerun")
@guard
def rerun(job_id: JobArgument, as_json: JsonOption = False) -> None:
    """Run a failed, timed-out or canceled job again, keeping its succeeded tasks."""

    def action(store: JobStore, settings: ResearcherSettings) -> None:
        store.job(job_id)  # an unknown job is refused, as by `job status`
        _with_scheduler(settings, store, lambda scheduler: scheduler.rerun(job_id), lambda: job_id)
        _finish(store, job_id, as_json)

    _with_store(action)


@job_app.command("stop")
@guard
def stop(job_id: JobArgument, as_json: JsonOption = False) -> None:
    """Stop a job: its waiting and running tasks are canceled, succeeded ones kept."""

    def action(store: JobStore, settings: ResearcherSettings) -> None:
        message = stop_job(store, job_id)
        if as_json:
            _print_json({"job_id": job_id, "message": message,
                         "state": store.job(job_id).state.value})  # fmt: skip
        else:
            console.print(message)

    _with_store(action)


@job_app.command("list")
@guard
def list_jobs(
    state: Annotated[State | None, typer.Option("--state", help="Only jobs in this state.")] = None,
    as_json: JsonOption = False,
) -> None:
    """List jobs, newest first, with why each is in its state."""

    def action(store: JobStore, settings: ResearcherSettings) -> None:
        jobs = store.recent_jobs(states=[state] if state else None)
        if as_json:
            _print_json([job.as_dict() for job in jobs])
            return
        # 80 columns: each job's name and reason go under its id.
        table = Table(title=f"jobs in {settings.data_dir}", box=box.SIMPLE_HEAD,
                      collapse_padding=True)  # fmt: skip
        table.add_column("job: name and reason", overflow="fold", min_width=len(new_id("job")))
        table.add_column("state", max_width=10)
        table.add_column("prio", justify="right", no_wrap=True)
        table.add_column("created (UTC)", no_wrap=True)
        for job in jobs:
            label = job.state.value + (" (process gone)" if job.orphaned else "")
            reason = job.reason
            if job.orphaned:
                reason += f"; `researcher job resume {job.job_id}` continues it"
            described = Text(f"{job.job_id}\n")
            described.append(f"{job.name}: ", style="bold")
            described.append(reason)
            table.add_row(described, label, str(job.priority),
                          job.created_at[:19].replace("T", " "), end_section=True)  # fmt: skip
        console.print(table)

    _with_store(action)


@job_app.command("status")
@guard
def status(job_id: JobArgument, as_json: JsonOption = False) -> None:
    """Show a job, its tasks and every state change, with reasons."""

    def action(store: JobStore, settings: ResearcherSettings) -> None:
        value = outputs.job_status(store, job_id)
        if as_json:
            _print_json(value)
        else:
            _print_status(value)

    _with_store(action)


def _print_status(status: dict[str, Any]) -> None:
    orphan = " (its process is gone: `researcher job resume` continues it)"
    console.print(
        f"job {status['job_id']} ({status['name']}): [bold]{status['state']}[/bold]"
        f"{orphan if status['orphaned'] else ''} - {status['reason']}"
    )
    table = Table()
    for column in ("task", "kind", "state", "attempt", "reason"):
        table.add_column(column)
    for task in status["tasks"]:
        table.add_row(task["name"], task["kind"], task["state"], str(task["attempt"]),
                      task["reason"])  # fmt: skip
    console.print(table)


@output_app.command("metrics")
@guard
def output_metrics(
    job_id: JobArgument, task: TaskOption = None, as_json: JsonOption = False
) -> None:
    """Each training round's aggregated and per-node metrics."""

    def action(store: JobStore, settings: ResearcherSettings) -> None:
        store.job(job_id)  # an unknown job is refused, as by `job status`
        value = outputs.metrics(store, job_id, task)
        if as_json:
            _print_json(value)
            return
        for name, entry in value["tasks"].items():
            rounds = [(r, outputs.round_metrics(r)) for r in entry["rounds"]]
            keys = sorted({k for _, shown in rounds for k in shown})
            table = Table(title=f"task {name}: {outputs.metrics_caption(entry)}")
            for column in (entry["step"], *keys, "nodes", "failed"):
                table.add_column(column)
            for r, shown in rounds:
                table.add_row(
                    str(r["round"]), *(f"{shown.get(k, float('nan')):.4f}" for k in keys),
                    str(len(r["nodes"])), ", ".join(r["failed"]) or "-",
                )  # fmt: skip
            console.print(table)

    _with_store(action)


@output_app.command("model")
@guard
def output_model(
    job_id: JobArgument,
    download: Annotated[
        Path, typer.Option("--download", help="Folder to copy the model files into.")
    ],
    task: TaskOption = None,
    as_json: JsonOption = False,
) -> None:
    """Copy a training task's final model, each round's and the round metrics to a folder."""

    def action(store: JobStore, settings: ResearcherSettings) -> None:
        store.job(job_id)  # an unknown job is refused, as by `job status`
        value = outputs.download_model(store, job_id, download, task)
        if as_json:
            _print_json(value)
        else:
            console.print(f"model of task {value['task']} after round {value['rounds']}: "
                          f"{value['model']}")  # fmt: skip

    _with_store(action)


@output_app.command("data")
@guard
def output_data(job_id: JobArgument, task: TaskOption = None, as_json: JsonOption = False) -> None:
    """Each task's outputs (statistics, state ids, plan ids...) and each node's answers."""

    def action(store: JobStore, settings: ResearcherSettings) -> None:
        store.job(job_id)  # an unknown job is refused, as by `job status`
        value = outputs.data(store, job_id, task)
        if as_json:
            _print_json(value)
            return
        for name, entry in value["tasks"].items():
            inherited = (
                f", inherited from {entry['inherited_from']}" if entry["inherited_from"] else ""
            )
            console.print(
                f"[bold]task {name}[/bold] ({entry['kind']}, {entry['state']}{inherited})"
            )
            console.print_json(json.dumps(_summary(entry["outputs"]), default=str))
            table = Table()
            for column in ("node", "slot", "status", "round trip (s)", "processing (s)", "reason"):
                table.add_column(column)
            for node in entry["nodes"]:
                table.add_row(
                    node["node_id"], node["slot"], node["status"], _secs(node["round_trip"]),
                    _secs(node["processing"]), node["reason"] or "",
                )  # fmt: skip
            console.print(table)

    _with_store(action)


@output_app.command("plot")
@guard
def output_plot(
    job_id: JobArgument,
    task: TaskOption = None,
    out: Annotated[Path | None, typer.Option("--out", help="The PNG to write.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Draw a training task's round metrics to a PNG."""

    def action(store: JobStore, settings: ResearcherSettings) -> None:
        store.job(job_id)  # an unknown job is refused, as by `job status`
        target = out or Path(f"{job_id}_metrics.png")
        path = outputs.plot_metrics(store, job_id, target, task)
        if as_json:
            _print_json({"job_id": job_id, "plot": str(path)})
        else:
            console.print(f"round metrics drawn to {path}")

    _with_store(action)


def _summary(value: Any, depth: int = 0) -> Any:
    """Outputs cut down for the terminal: long maps and lists are abridged."""
    if isinstance(value, dict):
        items = list(value.items())
        shown = {k: _summary(v, depth + 1) for k, v in items[:6]}
        if len(items) > 6:
            shown["..."] = f"{len(items) - 6} more"
        return shown
    if isinstance(value, list) and len(value) > 6:
        return [*value[:6], f"... {len(value) - 6} more"]
    return value


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def standalone_app() -> typer.Typer:
    """Both apps under one command, as the ``researcher`` command mounts them."""
    app = CliApp(no_args_is_help=True, add_completion=False)
    app.add_typer(job_app, name="job")
    app.add_typer(output_app, name="output")
    return app


def main() -> None:
    """Run both apps as ``python -m researcher.cli.jobs job|output ...``."""
    standalone_app()()


if __name__ == "__main__":
    main()
