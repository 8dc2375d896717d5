"""The demo's federated story, told against any :class:`Requests`: datasets, plan approval,
federated analytics, federated standardisation, FedAvg rounds and the final comparison; each
step is recorded as a task of the demo's job (:mod:`simulation.demo_record`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from broker_net.codes import PreprocStep, PreprocType
from broker_net.messages import ListReply, ListRequest
from researcher.errors import JobError
from researcher.jobs.analytics import FARequestJob
from researcher.jobs.experiment import Experiment, ExperimentResult, RoundRecord
from researcher.jobs.plans import TrainingPlanApproveJob, TrainingPlanCheckJob
from researcher.jobs.preprocessing import PreprocRequestJob
from researcher.requests.policies import DiscardOnTimeout, StopOnError
from researcher.requests.router import Requests
from simulation.demo_plan import BreastCancerPlan
from simulation.demo_record import DemoRecord
from simulation.sample_data import TARGET, breast_cancer
from training_plans.plan import plan_source

Approver = Callable[[str, str], Awaitable[None]]
"""``await approve(node_id, plan_id)``: what a node's operator does to approve a plan."""

EXPERIMENT = "demo-breast-cancer"
TRAINING_ARGS = {"epochs": 2, "batch_size": 16, "learning_rate": 0.1, "seed": 1}


@dataclass(frozen=True)
class StoryResult:
    """The figures the demo ends with."""

    federated_accuracy: float
    centralised_accuracy: float
    experiment: ExperimentResult


async def tell(
    requests: Requests,
    nodes: Sequence[str],
    approve: Approver,
    console: Console,
    record: DemoRecord,
    *,
    rounds: int = 10,
    secagg: bool = False,
) -> StoryResult:
    """Run the whole story, print it and ``record`` it; with ``secagg`` the FedAvg rounds use
    secure aggregation."""
    datasets = await _find_datasets(requests, nodes, console)
    record.nodes(datasets)
    await _approve_plan(requests, nodes, approve, console, record)
    with record.task("stats"):
        features, mean, std = await _analytics(requests, datasets, console)
    with record.task("scale"):
        state_ids = await _standardise(requests, datasets, features, mean, std, console)
    experiment = Experiment(
        requests,
        plan=BreastCancerPlan,
        datasets=datasets,
        rounds=rounds,
        training_args=TRAINING_ARGS,
        model_args={"n_features": len(features)},
        state_ids=state_ids,
        policies=[StopOnError(), DiscardOnTimeout(120)],
        min_replies=len(nodes),
        experiment_id=EXPERIMENT,
        secagg=secagg,
        hooks=record.hooks,
        monitor=record.progress,
    )
    with record.task("train", f"{rounds} rounds done"):
        result = await _train(experiment, console, record)
    return _compare(result, features, mean, std, rounds, console)


async def _find_datasets(
    requests: Requests, nodes: Sequence[str], console: Console
) -> dict[str, str]:
    fed = await requests.request(
        ListRequest(researcher_id=requests.researcher_id, tags=["breast-cancer"]),
        nodes,
        [DiscardOnTimeout(10)],
    )
    datasets: dict[str, str] = {}
    table = Table(title="1. Datasets the nodes hold (metadata only)")
    for column in ("node", "dataset", "rows", "columns"):
        table.add_column(column)
    for node, reply in sorted(fed.replies().items()):
        assert isinstance(reply, ListReply)
        if reply.datasets:
            info = reply.datasets[0]
            datasets[node] = info.dataset_id
            table.add_row(node, info.name, str(info.shape[0]), str(len(info.columns)))
    console.print(table)
    missing = set(nodes) - set(datasets)
    if missing:
        raise JobError(f"nodes without the breast-cancer dataset: {sorted(missing)}")
    return datasets


async def _approve_plan(
    requests: Requests,
    nodes: Sequence[str],
    approve: Approver,
    console: Console,
    record: DemoRecord,
) -> None:
    source = plan_source(BreastCancerPlan)
    with record.task("approve", "approved by every node's operator"):
        submitted = await TrainingPlanApproveJob(
            requests, training_plan=source, description="demo: logistic regression", nodes=nodes
        ).execute()
        table = Table(title="2. Training plan approval")
        for column in ("node", "plan id", "after submission", "after review"):
            table.add_column(column)
        for node in nodes:
            reply = submitted.get(node)
            if reply is None or reply.training_plan_id is None:
                raise JobError(f"node {node} did not register the training plan")
            await approve(node, reply.training_plan_id)
    with record.task("check"):
        checked = await TrainingPlanCheckJob(
            requests, experiment_id=EXPERIMENT, training_plan=source, nodes=nodes
        ).execute()
    for node in nodes:
        plan_id = submitted[node].training_plan_id or ""
        status = checked[node].status.value if node in checked else "no answer"
        table.add_row(node, plan_id[:12], submitted[node].status.value, status)
    console.print(table)


async def _analytics(
    requests: Requests, datasets: dict[str, str], console: Console
) -> tuple[list[str], dict[str, float], dict[str, float]]:
    result = await FARequestJob(
        requests,
        experiment_id=EXPERIMENT,
        fa_id="fa-demo",
        datasets=datasets,
        stats=["count", "mean", "std", "min", "max"],
        policies=[StopOnError(), DiscardOnTimeout(30)],
    ).execute()
    statistics = result.statistics["columns"]
    features = [column for column in statistics if column != TARGET]
    table = Table(title="3. Federated analytics (exact pooled statistics, no row leaves a node)")
    for column in ("column", "count", "mean", "std", "min", "max"):
        table.add_column(column, justify="right" if column != "column" else "left")
    for column in [*features[:6], TARGET]:
        values = statistics[column]
        table.add_row(
            column, str(values["count"]), f"{values['mean']:.4g}", f"{values['std']:.4g}",
            f"{values['min']:.4g}", f"{values['max']:.4g}",
        )  # fmt: skip
    console.print(table)
    console.print(f"   ... and {len(features) - 6} more feature columns")
    mean = {column: float(statistics[column]["mean"]) for column in features}
    std = {column: float(statistics[column]["std"]) for column in features}
    return features, mean, std


async def _standardise(
    requests: Requests,
    datasets: dict[str, str],
    features: list[str],
    mean: dict[str, float],
    std: dict[str, float],
    console: Console,
) -> dict[str, str | None]:
    fitted = await PreprocRequestJob(
        requests, experiment_id=EXPERIMENT, preproc_id="standardize", datasets=datasets,
        preproc_type=PreprocType.STANDARDIZE, preproc_step=PreprocStep.FIT,
        preproc_args={"mean": mean, "std": std},
    ).execute()  # fmt: skip
    applied = await PreprocRequestJob(
        requests, experiment_id=EXPERIMENT, preproc_id="standardize", datasets=datasets,
        preproc_type=PreprocType.STANDARDIZE, preproc_step=PreprocStep.APPLY,
        state_ids=fitted.state_ids,
    ).execute()  # fmt: skip
    if fitted.errors or applied.errors:
        raise JobError(f"standardisation failed: {fitted.errors or applied.errors}")
    console.print(
        f"4. Federated standardisation: every node scaled its {len(features)} features with the "
        "global mean and std; state ids "
        + ", ".join(f"{node}={state}" for node, state in sorted(applied.state_ids.items()))
    )
    return dict(applied.state_ids)


async def _train(experiment: Experiment, console: Console, record: DemoRecord) -> ExperimentResult:
    how = " with secure aggregation" if experiment.secagg else ""
    console.print(
        f"5. FedAvg{how}: {experiment.rounds} rounds over {len(experiment.datasets)} nodes"
    )
    with Progress(
        TextColumn("   {task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("training", total=experiment.rounds)

        def on_round(done: RoundRecord) -> None:
            record.round(done, experiment.params)
            accuracy = done.aggregated_metrics.get("accuracy", float("nan"))
            progress.update(
                task, advance=1,
                description=f"round {done.round}: validation accuracy {accuracy:.3f}",
            )  # fmt: skip

        result = await experiment.run(on_round)
    if all(record.secure_aggregation for record in result.rounds):
        console.print(
            "   The researcher only saw masked vectors: every update arrived masked (uint64), "
            f"only each round's weighted sum was unmasked ({len(result.rounds)} rounds)"
        )
    return result


def _compare(
    result: ExperimentResult,
    features: list[str],
    mean: dict[str, float],
    std: dict[str, float],
    rounds: int,
    console: Console,
) -> StoryResult:
    rounds_table = Table(title="Per-round metrics (weighted by sample size)")
    for column in ("round", "val accuracy", "val loss", "nodes", "slowest round trip (s)"):
        rounds_table.add_column(column, justify="right")
    for record in result.rounds:
        slowest = max((t.round_trip or 0.0) for t in record.timings.values())
        rounds_table.add_row(
            str(record.round), f"{record.aggregated_metrics.get('accuracy', float('nan')):.3f}",
            f"{record.aggregated_metrics.get('loss', float('nan')):.4f}",
            str(len(record.nodes)), f"{slowest:.2f}",
        )  # fmt: skip
    console.print(rounds_table)

    times = Table(title="Per-node request times, averaged over the rounds")
    for column in ("node", "round trip (s)", "node processing (s)", "queue + transit (ms)"):
        times.add_column(column, justify="right")
    for node in sorted(result.rounds[0].timings):
        rows = [record.timings[node] for record in result.rounds if node in record.timings]
        times.add_row(
            node, f"{np.mean([t.round_trip or 0 for t in rows]):.3f}",
            f"{np.mean([t.processing or 0 for t in rows]):.3f}",
            f"{1000 * np.mean([t.queue_and_transit or 0 for t in rows]):.1f}",
        )  # fmt: skip
    console.print(times)

    data = breast_cancer()
    scale = np.array([std[c] for c in features])
    centre = np.array([mean[c] for c in features])
    x_test = (data.x_test - centre) / scale
    federated = BreastCancerPlan()
    federated.init_model({"n_features": len(features)})
    federated.set_params(result.params)
    federated_accuracy = federated.evaluate(x_test, data.y_test)["accuracy"]

    central = BreastCancerPlan()
    central.init_model({"n_features": len(features)})
    central.train(
        (data.x_train - centre) / scale, data.y_train,
        {**TRAINING_ARGS, "epochs": int(TRAINING_ARGS["epochs"]) * rounds},
    )  # fmt: skip
    central_accuracy = central.evaluate(x_test, data.y_test)["accuracy"]
    console.print(
        f"6. Test accuracy on {len(data.y_test)} held-out rows: federated model "
        f"[bold]{federated_accuracy:.3f}[/bold], model trained centrally on the pooled data "
        f"[bold]{central_accuracy:.3f}[/bold] (difference "
        f"{100 * (federated_accuracy - central_accuracy):+.1f} points)"
    )
    return StoryResult(federated_accuracy, central_accuracy, result)
