"""Federated evaluation: evaluation-only rounds of the global model, and the best round.

An :class:`Evaluation` tells an :class:`~researcher.jobs.experiment.Experiment` when to
evaluate the global model (every ``every`` rounds, and after the last one with ``at_end``) and
on what: each node's validation split of its training dataset (the split training uses, from
``validation_fraction`` and ``split_seed``), or a test dataset the node registered
(``test_datasets``: node -> dataset id), evaluated whole. An evaluation is a validation-only
:class:`~broker_net.messages.TrainRequest` (``training`` false): the node runs the plan's
``evaluate`` on the global parameters and answers metrics and its sample size. The metrics are
averaged weighted by sample size, and :func:`best_round` finds the round whose aggregated
``metric`` is best::

    evaluation = Evaluation(every=2, metric="accuracy")
    result = await Experiment(requests, plan=MyPlan, datasets=..., rounds=10,
                              evaluation=evaluation).run()
    print(result.best.round, result.best.value, result.best.params)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from researcher.errors import RequestError
from researcher.jobs.aggregation import weighted_metrics
from researcher.jobs.training import TrainingJob
from researcher.requests.hooks import RequestHooks
from researcher.requests.ledger import NodeTiming
from researcher.requests.policies import Policy

if TYPE_CHECKING:
    from researcher.jobs.experiment import Experiment

logger = logging.getLogger(__name__)

Goal = Literal["min", "max"]
"""Whether a metric is better low (a loss) or high (an accuracy)."""

_LOWER_IS_BETTER = ("loss", "error", "mse", "mae", "rmse")


def metric_goal(metric: str) -> Goal:
    """``min`` for a metric named like a loss or an error, ``max`` for anything else."""
    return "min" if any(word in metric.lower() for word in _LOWER_IS_BETTER) else "max"


@dataclass(frozen=True)
class EvaluationRecord:
    """What one evaluation of the global model produced.

    Attributes:
        round: the training round after which the model was evaluated.
        metrics: each node's metrics.
        aggregated_metrics: those metrics averaged, weighted by sample size.
        failed: nodes that could not evaluate, with the reason.
        test_datasets: the test dataset each node evaluated on; empty for validation splits.
    """

    round: int
    nodes: list[str]
    sample_sizes: dict[str, int]
    metrics: dict[str, dict[str, float]]
    aggregated_metrics: dict[str, float]
    failed: dict[str, str]
    timings: dict[str, NodeTiming]
    request_id: str
    test_datasets: dict[str, str]


@dataclass(frozen=True)
class BestModel:
    """The round whose evaluation was best by ``metric``, its value and the model then."""

    round: int
    metric: str
    value: float
    params: dict[str, npt.NDArray[np.float64]]


def best_round(
    evaluations: Iterable[tuple[int, Mapping[str, float]]], metric: str, goal: Goal | None = None
) -> tuple[int, float] | None:
    """The round and value of the best ``metric`` among ``(round, aggregated metrics)``; the
    earliest round wins a tie. ``None`` when no evaluation has the metric."""
    goal = goal or metric_goal(metric)
    best: tuple[int, float] | None = None
    for number, values in evaluations:
        if metric not in values:
            continue
        value = float(values[metric])
        if best is None or (value < best[1] if goal == "min" else value > best[1]):
            best = (number, value)
    return best


class Evaluation:
    """When and where an experiment evaluates its global model, and its best round so far.

    Args:
        every: evaluate after every ``every``-th round.
        at_end: evaluate after the last round too.
        test_datasets: a test dataset id on each node to evaluate on (whole); only the nodes
            named are evaluated. Default: each node's validation split of its training data.
        metric: the aggregated metric that picks the best round.
        goal: ``min`` or ``max``; default from the metric's name (see :func:`metric_goal`).
        policies: when to stop waiting for the nodes (default: the experiment's).
        hooks: the :class:`RequestHooks` of each evaluation's request, by round number.
        min_replies: fewest nodes an evaluation needs; fewer raises RequestError.

    Raises:
        ValueError: neither ``every`` nor ``at_end``, or ``every`` below 1.
    """

    def __init__(
        self,
        *,
        every: int | None = None,
        at_end: bool = True,
        test_datasets: Mapping[str, str] | None = None,
        metric: str = "loss",
        goal: Goal | None = None,
        policies: Sequence[Policy] | None = None,
        hooks: Callable[[int], RequestHooks | None] | None = None,
        min_replies: int = 1,
    ) -> None:
        if every is None and not at_end:
            raise ValueError("an evaluation needs 'every' or 'at_end'")
        if every is not None and every < 1:
            raise ValueError("'every' must be at least 1")
        self.every = every
        self.at_end = at_end
        self.test_datasets = dict(test_datasets or {})
        self.metric = metric
        self.goal: Goal = goal or metric_goal(metric)
        self.policies = list(policies) if policies is not None else None
        self.hooks = hooks
        self.min_replies = min_replies
        self.best: BestModel | None = None

    def due(self, number: int, rounds: int) -> bool:
        """Whether to evaluate after round ``number`` of ``rounds``."""
        return bool(self.every and number % self.every == 0) or (self.at_end and number == rounds)

    async def run(self, experiment: Experiment, number: int) -> EvaluationRecord:
        """Evaluate ``experiment``'s global parameters after round ``number``, on every
        available node (with a sampling: online and not excluded), and keep them as the best
        model when they are.

        Raises:
            RequestError: fewer than ``min_replies`` nodes evaluated.
        """
        nodes = list(experiment.datasets)
        if experiment.sampling is not None:
            nodes, _ = experiment.sampling.available(
                number, experiment.datasets, experiment.requests.presence
            )
        if self.test_datasets:
            datasets = {n: self.test_datasets[n] for n in nodes if n in self.test_datasets}
            arguments: dict[str, Any] = {"validation_fraction": 1.0}
            state_ids: dict[str, str | None] = {}
        else:
            datasets = {n: experiment.datasets[n] for n in nodes}
            split = ("validation_fraction", "split_seed")
            arguments = {k: v for k, v in experiment.training_args.items() if k in split}
            state_ids = experiment.state_ids
        if not datasets:
            raise RequestError(f"evaluation after round {number}: no node to evaluate on")
        job = TrainingJob(
            experiment.requests, experiment_id=experiment.experiment_id, round_number=number,
            training_plan=experiment.source, training_plan_class=experiment.plan.__name__,
            params=experiment.params, datasets=datasets, training_args=arguments,
            model_args=experiment.model_args, state_ids=state_ids, training=False,
            policies=self.policies if self.policies is not None else experiment.policies,
            hooks=self.hooks(number) if self.hooks is not None else None,
        )  # fmt: skip
        outcome = await job.execute()
        answered = {n: r for n, r in outcome.replies.items() if r.sample_size}
        if len(answered) < self.min_replies:
            raise RequestError(
                f"evaluation after round {number}: {len(answered)} node(s) evaluated, "
                f"{self.min_replies} needed; "
                + "; ".join(f"{node}: {why}" for node, why in outcome.failed.items()),
                request_id=outcome.request_id,
            )
        sizes = {node: int(reply.sample_size or 0) for node, reply in answered.items()}
        metrics = {node: dict(reply.metrics) for node, reply in answered.items()}
        record = EvaluationRecord(
            round=number, nodes=sorted(answered), sample_sizes=sizes, metrics=metrics,
            aggregated_metrics=weighted_metrics(metrics, sizes), failed=outcome.failed,
            timings=outcome.timings, request_id=outcome.request_id,
            test_datasets=datasets if self.test_datasets else {},
        )  # fmt: skip
        logger.info("evaluation after round %d: %s", number, record.aggregated_metrics)
        self._keep_if_best(record, experiment.params)
        return record

    def _keep_if_best(
        self, record: EvaluationRecord, params: Mapping[str, npt.NDArray[Any]]
    ) -> None:
        earlier = [] if self.best is None else [(self.best.round, {self.metric: self.best.value})]
        found = best_round([*earlier, (record.round, record.aggregated_metrics)], self.metric,
                           self.goal)  # fmt: skip
        if found is not None and (self.best is None or found[0] == record.round):
            copied = {name: np.array(value, dtype=np.float64) for name, value in params.items()}
            self.best = BestModel(found[0], self.metric, found[1], copied)
