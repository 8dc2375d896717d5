"""A job's outputs, read from the store as plain data, like FATE Flow's ``flow output``.

- :func:`job_status`: the job, its tasks and every state change;
- :func:`metrics`: each training round's aggregated and per-node metrics and times, and the
  evaluation after it, if any;
- :func:`data`: each task's outputs and each node's answers;
- :func:`download_model`: copies a training task's model files to a folder;
- :func:`plot_metrics`: draws the round metrics to a PNG.

Tasks inherited from an earlier job are read where they ran, in that job.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from researcher.orchestration.store.job_store import JobStore
from researcher.orchestration.store.records import TaskRecord
from researcher.orchestration.trained_models import stored_evaluations

_TRAINING_KINDS = ("training", "async_training")
"""Task kinds with rounds and models; an asynchronous task's model versions are its rounds."""


class OutputError(ValueError):
    """Raised when a job has no such output (no such task, no training task, no model)."""


def job_status(store: JobStore, job_id: str) -> dict[str, Any]:
    """The job, its tasks and its history, as plain data.

    Raises:
        JobNotFoundError: no such job.
    """
    job = store.job(job_id)
    return {
        **job.as_dict(),
        "tasks": [task.as_dict() for task in store.tasks(job_id)],
        "history": [entry.as_dict() for entry in store.history(job_id)],
    }


def metrics(store: JobStore, job_id: str, task: str | None = None) -> dict[str, Any]:
    """Round metrics of the job's training tasks (or of ``task``); a round followed by an
    evaluation has it under ``evaluation`` (weighted and per-node metrics).

    Raises:
        JobNotFoundError: no such job or task.
        OutputError: ``task`` is not a training task.
    """
    result: dict[str, Any] = {"job_id": job_id, "tasks": {}}
    for record in _training_tasks(store, job_id, task):
        owner = record.inherited_from or job_id
        per_round: dict[int, dict[str, Any]] = {}
        for row in store.rounds(owner, record.name):
            per_round[row.round] = {
                "round": row.round, "request_id": row.request_id, "metrics": row.metrics,
                "failed": row.failed, "duration": row.duration, "nodes": {},
            }  # fmt: skip
        for entry in store.node_results(owner, record.name):
            if entry["round"] in per_round and entry["slot"] == f"round-{entry['round']}":
                per_round[entry["round"]]["nodes"][entry["node_id"]] = {
                    key: entry[key]
                    for key in ("status", "reason", "metrics", "sample_size", "round_trip",
                                "processing", "queue_and_transit")
                }  # fmt: skip
        if record.kind == "async_training":
            _version_nodes(store, owner, record.name, per_round)
        for evaluation in stored_evaluations(store, owner, record.name):
            if evaluation["round"] in per_round:
                per_round[evaluation["round"]]["evaluation"] = evaluation
        result["tasks"][record.name] = {
            "state": record.state.value,
            "inherited_from": record.inherited_from,
            "step": "version" if record.kind == "async_training" else "round",
            "rounds": [per_round[number] for number in sorted(per_round)],
            "best": (record.outputs or {}).get("best"),
        }
    return result


def _version_nodes(
    store: JobStore, owner: str, task: str, per_round: dict[int, dict[str, Any]]
) -> None:
    """An asynchronous task's versions: the nodes whose updates each applied, and how stale."""
    attempt = store.task(owner, task).attempt
    for version in store.versions(owner, task, attempt):
        entry = per_round.get(version["version"])
        if entry is None:
            continue
        entry["staleness"] = version["staleness"]
        for node, staleness in zip(version["nodes"], version["staleness"], strict=True):
            applied = entry["nodes"].setdefault(node, {"status": "APPLIED", "staleness": []})
            applied["staleness"].append(staleness)


def round_metrics(entry: dict[str, Any]) -> dict[str, float]:
    """One round of :func:`metrics` as one map: its training metrics, and those of the
    evaluation after it prefixed ``eval_``."""
    evaluation = (entry.get("evaluation") or {}).get("metrics") or {}
    return {**entry["metrics"], **{f"eval_{k}": v for k, v in evaluation.items()}}


def metrics_caption(task: dict[str, Any]) -> str:
    """What a training task's rounds of :func:`metrics` show, and its best round if any."""
    step = task.get("step", "round")
    if step != "round":
        return f"metrics by {step} (sample-weighted)"
    caption = "metrics by round (weighted by sample size; eval_: evaluation of the global model)"
    best = task.get("best")
    if best:
        caption += f"; best: round {best['round']} ({best['metric']} {best['value']:.4f})"
    return caption


def data(store: JobStore, job_id: str, task: str | None = None) -> dict[str, Any]:
    """Each task's outputs and each node's answers to its requests.

    Raises:
        JobNotFoundError: no such job or task.
    """
    records = [store.task(job_id, task)] if task else store.tasks(job_id)
    tasks: dict[str, Any] = {}
    for record in records:
        owner = record.inherited_from or job_id
        tasks[record.name] = {
            "kind": record.kind,
            "state": record.state.value,
            "inherited_from": record.inherited_from,
            "outputs": record.outputs,
            "nodes": [
                {k: v for k, v in entry.items() if k != "task"}
                for entry in store.node_results(owner, record.name)
            ],
        }
        if record.kind == "async_training":  # each update: node, fate, staleness, times
            attempt = store.task(owner, record.name).attempt
            tasks[record.name]["updates"] = store.async_updates(owner, record.name, attempt)
    return {"job_id": job_id, "tasks": tasks}


def download_model(
    store: JobStore, job_id: str, directory: Path, task: str | None = None
) -> dict[str, Any]:
    """Copy a training task's model files (``model.npz``, the final one, ``best.npz``, the best
    evaluated one, and each round's) and its round metrics (``rounds.json``) into
    ``directory/<job id>_<task>/``.

    Raises:
        JobNotFoundError: no such job or task.
        OutputError: no training task, several without ``task``, or no model yet.
    """
    record = _one_training_task(store, job_id, task)
    owner = record.inherited_from or job_id
    models = store.models(owner, record.name)
    if not models:
        raise OutputError(f"task {record.name} of job {job_id} has no model yet")
    target = directory / f"{job_id}_{record.name}"
    target.mkdir(parents=True, exist_ok=True)
    files = []
    for number, path in models.items():
        copied = target / f"round-{number}.npz"
        shutil.copyfile(path, copied)
        files.append(str(copied))
    final = target / "model.npz"
    shutil.copyfile(models[max(models)], final)
    best = (record.outputs or {}).get("best")
    if best and best["round"] in models:
        shutil.copyfile(models[best["round"]], target / "best.npz")
        files.append(str(target / "best.npz"))
    rounds = metrics(store, job_id, record.name)["tasks"][record.name]["rounds"]
    (target / "rounds.json").write_text(json.dumps(rounds, indent=2))
    return {
        "job_id": job_id, "task": record.name, "directory": str(target), "model": str(final),
        "rounds": max(models), "files": [str(final), *files, str(target / "rounds.json")],
    }  # fmt: skip


def plot_metrics(store: JobStore, job_id: str, path: Path, task: str | None = None) -> Path:
    """Draw a training task's metrics, one panel per metric: the aggregated value of each
    round as a thick line, each node's as a thin dashed one. Writes a PNG to ``path``.

    Raises:
        JobNotFoundError: no such job or task.
        OutputError: no training task, several without ``task``, or no round yet.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    record = _one_training_task(store, job_id, task)
    rounds = metrics(store, job_id, record.name)["tasks"][record.name]["rounds"]
    if not rounds:
        raise OutputError(f"task {record.name} of job {job_id} has no finished round")
    names = sorted({name for r in rounds for name in r["metrics"]})
    nodes = sorted({node for r in rounds for node in r["nodes"]})
    figure, axes = plt.subplots(
        1, len(names), figsize=(4.5 * len(names), 3.8), squeeze=False, layout="constrained"
    )
    for axis, name in zip(axes[0], names, strict=True):
        for node in nodes:
            points = [
                (r["round"], (r["nodes"][node]["metrics"] or {}).get(name))
                for r in rounds
                if node in r["nodes"]
            ]
            points = [(x, y) for x, y in points if y is not None]
            if points:
                axis.plot(*zip(*points, strict=True), linestyle="--", linewidth=1,
                          alpha=0.7, label=node)  # fmt: skip
        aggregated = [(r["round"], r["metrics"][name]) for r in rounds if name in r["metrics"]]
        axis.plot(*zip(*aggregated, strict=True), marker="o", linewidth=2.5, color="black",
                  label="all nodes (weighted)")  # fmt: skip
        axis.set_title(name)
        axis.set_xlabel("round")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize="small", loc="best")
    figure.suptitle(f"job {store.job(job_id).name} ({job_id}), task {record.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _training_tasks(store: JobStore, job_id: str, task: str | None) -> list[TaskRecord]:
    if task is not None:
        record = store.task(job_id, task)
        if record.kind not in _TRAINING_KINDS:
            raise OutputError(
                f"task {task} is a {record.kind} task: its results are in `researcher output data`"
            )
        return [record]
    return [record for record in store.tasks(job_id) if record.kind in _TRAINING_KINDS]


def _one_training_task(store: JobStore, job_id: str, task: str | None) -> TaskRecord:
    found = _training_tasks(store, job_id, task)
    if not found:
        raise OutputError(f"job {job_id} has no training task")
    if len(found) > 1:
        raise OutputError(
            f"job {job_id} has several training tasks ({', '.join(r.name for r in found)}): "
            "name one with --task"
        )
    return found[0]
