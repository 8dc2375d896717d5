"""Experiment: N rounds of federated training over the nodes' datasets, under a strategy
(FedAvg by default, see :mod:`researcher.jobs.strategies`) and an optional client sampling
(:mod:`researcher.jobs.sampling`).

::

    experiment = Experiment(requests, plan=MyPlan, datasets={"n1": "dataset_..."}, rounds=10,
                            training_args={"epochs": 2}, model_args={"n_features": 30})
    result = await experiment.run()
    print(result.rounds[-1].metrics, result.params)
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from broker_net.message_base import new_id
from researcher.errors import RequestError
from researcher.jobs.aggregation import weighted_metrics
from researcher.jobs.evaluation import BestModel, Evaluation, EvaluationRecord
from researcher.jobs.monitor import MonitorCallback, ProgressMonitor, monitored, monitoring
from researcher.jobs.sampling import Sampling
from researcher.jobs.secagg import SecureAggregation
from researcher.jobs.strategies import FedAvg, NodeUpdate, Strategy
from researcher.jobs.training import TrainingJob
from researcher.requests.hooks import RequestHooks
from researcher.requests.ledger import NodeTiming
from researcher.requests.policies import DiscardOnTimeout, Policy
from researcher.requests.router import Requests
from training_plans.plan import TrainingPlan, plan_source

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoundRecord:
    """What one round produced.

    Attributes:
        metrics: each node's local validation metrics.
        aggregated_metrics: those metrics averaged, weighted by sample size.
        timings: each node's round-trip, processing and queue-and-transit time.
        failed: nodes left out of the round, with the reason.
        secure_aggregation: the updates arrived masked and only their weighted sum was
            unmasked.
        sampled: the nodes asked to train in the round.
        skipped: the experiment's nodes that were not available (offline, excluded), with the
            reason; only with a sampling.
        evaluation: the evaluation of the global model after this round, when one was due.
    """

    round: int
    nodes: list[str]
    sample_sizes: dict[str, int]
    metrics: dict[str, dict[str, float]]
    aggregated_metrics: dict[str, float]
    timings: dict[str, NodeTiming]
    failed: dict[str, str]
    duration: float
    request_id: str
    secure_aggregation: bool = False
    sampled: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    evaluation: EvaluationRecord | None = None


@dataclass
class ExperimentResult:
    """The final parameters, the record of every round and, with an evaluation, the best
    round's model."""

    experiment_id: str
    params: dict[str, npt.NDArray[np.float64]]
    rounds: list[RoundRecord] = field(default_factory=list)
    model_path: Path | None = None
    best: BestModel | None = None


class Experiment:
    """Rounds of federated training of a training plan over several nodes.

    Args:
        requests: a started :class:`Requests`.
        plan: the training plan class; its source is sent to the nodes.
        datasets: dataset id on each node.
        rounds: number of FedAvg rounds.
        training_args: epochs, batch size, learning rate... for the plan's ``train``.
        model_args: for the plan's ``init_model``.
        state_ids: each node's preprocessing state to train on.
        policies: when to stop waiting in each round (default: give a node 600 s).
        min_replies: fewest successful nodes a round needs; fewer raises RequestError.
        output_dir: where the final model and the round metrics are saved.
        source: the plan's source as sent to the nodes (default: ``plan_source(plan)``).
        hooks: gives the :class:`RequestHooks` of each round's request, by round number, to
            record it or to resume it in another process.
        secagg: aggregate with secure aggregation (see :mod:`researcher.jobs.secagg`): set up once
            before the first round, each node then sends its update masked and the researcher
            learns only their weighted average. A node failing a round is recovered from while
            a strict majority remains. Needs security on every party.
        secagg_options: settings of that secure aggregation (:class:`SecureAggregation`'s
            ``clipping_range``, ``precision_bits``, ``max_weight``, ``ring_bits``).
        strategy: chooses each round's nodes and per-node training arguments, and turns the
            replies into the next global parameters (default :class:`FedAvg`). Under secure
            aggregation it gets only the weighted mean (:meth:`Strategy.step`).
        sampling: which of the available nodes (online per the heartbeats, not excluded) train
            in each round; without it every node is asked every round, online or not.
        encrypt_aux_var: encrypt the strategy's optimizer auxiliary variables (SCAFFOLD's
            control variates) for each node, and have the nodes encrypt theirs for the
            researcher; needs security on every party.
        evaluation: evaluation-only rounds of the global model (every k rounds, at the end, on
            validation splits or test datasets) and the best round by a metric (see
            :mod:`researcher.jobs.evaluation`).
        monitor: called with each node's progress during the rounds (a
            :class:`~researcher.requests.progress.ProgressEvent`), a function or a coroutine
            function, in a task of its own; see :mod:`researcher.jobs.monitor`.
    """

    def __init__(
        self,
        requests: Requests,
        *,
        plan: type[TrainingPlan],
        datasets: Mapping[str, str],
        rounds: int = 10,
        training_args: Mapping[str, Any] | None = None,
        model_args: Mapping[str, Any] | None = None,
        state_ids: Mapping[str, str | None] | None = None,
        policies: Sequence[Policy] | None = None,
        min_replies: int = 1,
        experiment_id: str | None = None,
        initial_params: Mapping[str, npt.NDArray[Any]] | None = None,
        output_dir: Path | None = None,
        source: str | None = None,
        hooks: Callable[[int], RequestHooks | None] | None = None,
        secagg: bool = False,
        secagg_options: Mapping[str, Any] | None = None,
        strategy: Strategy | None = None,
        sampling: Sampling | None = None,
        encrypt_aux_var: bool = False,
        evaluation: Evaluation | None = None,
        monitor: MonitorCallback | None = None,
    ) -> None:
        if rounds < 1:
            raise ValueError("an experiment needs at least one round")
        if not datasets:
            raise ValueError("an experiment needs at least one node dataset")
        self.requests = requests
        self.plan = plan
        self.source = source if source is not None else plan_source(plan)
        self.hooks = hooks
        self.monitor = ProgressMonitor(monitor) if monitor is not None else None
        self.secagg = secagg
        self.secagg_options = dict(secagg_options or {})
        self.strategy = strategy if strategy is not None else FedAvg()
        self.sampling = sampling
        self.encrypt_aux_var = encrypt_aux_var
        self.evaluation = evaluation
        if secagg and not self.strategy.secure_aggregation:
            raise ValueError(
                f"the {self.strategy.name} strategy cannot run under secure aggregation"
            )
        self.strategy.prepare(list(datasets))
        self.secure_aggregation: SecureAggregation | None = None
        self.datasets = dict(datasets)
        self.rounds = rounds
        self.training_args = dict(training_args or {})
        self.model_args = dict(model_args or {})
        self.state_ids = dict(state_ids or {})
        self.policies = list(policies) if policies is not None else [DiscardOnTimeout(600)]
        self.min_replies = min_replies
        self.experiment_id = experiment_id or new_id("experiment")
        self.output_dir = output_dir
        if initial_params is None:
            model = plan()
            model.init_model(self.model_args)
            initial_params = model.get_params()
        self.params = {name: np.asarray(value) for name, value in initial_params.items()}

    async def run(
        self, on_round: Callable[[RoundRecord], None] | None = None, *, first_round: int = 1
    ) -> ExperimentResult:
        """Run every round; call ``on_round`` after each.

        Args:
            on_round: called with each round's record, once the global parameters hold it.
            first_round: start here, from the current parameters (to continue an experiment
                whose earlier rounds ran before).

        Raises:
            RequestError: a round got fewer than ``min_replies`` successful nodes.
        """
        result = ExperimentResult(self.experiment_id, self.params)
        for number in range(first_round, self.rounds + 1):
            record = await self.run_round(number)
            if self.evaluation is not None and self.evaluation.due(number, self.rounds):
                record = replace(record, evaluation=await self.evaluation.run(self, number))
                result.best = self.evaluation.best
            result.rounds.append(record)
            result.params = self.params
            if on_round is not None:
                on_round(record)
        if self.output_dir is not None:
            result.model_path = self.save(result)
        return result

    async def run_round(self, number: int) -> RoundRecord:
        """Run one round and replace the global parameters by the strategy's aggregate of the
        updates.

        Raises:
            SamplingError: fewer available nodes than the sampling's ``min_nodes``.
            RequestError: fewer than ``min_replies`` successful nodes.
        """
        started = time.monotonic()
        nodes, skipped = self._round_nodes(number)
        secagg = await self._secure_aggregation() if self.secagg else None
        job = TrainingJob(
            self.requests,
            experiment_id=self.experiment_id,
            round_number=number,
            training_plan=self.source,
            training_plan_class=self.plan.__name__,
            params=self.params,
            datasets={node: self.datasets[node] for node in nodes},
            training_args=self.training_args,
            node_training_args=self.strategy.configure(number, nodes),
            optim_aux_var=self.strategy.optim_aux_var(number, nodes, self.params),
            encrypt_aux_var=self.encrypt_aux_var,
            model_args=self.model_args,
            state_ids=self.state_ids,
            policies=self.policies,
            hooks=monitored(self.hooks(number) if self.hooks else None, self.monitor),
            secagg_arguments=(
                dict.fromkeys(nodes, secagg.arguments(number - 1)) if secagg else None
            ),
        )
        async with monitoring(self.monitor):
            outcome = await job.execute()
        usable = {n: r for n, r in outcome.replies.items() if r.params and r.sample_size}
        if len(usable) < self.min_replies:
            raise RequestError(
                f"round {number}: {len(usable)} node(s) answered, {self.min_replies} needed; "
                + "; ".join(f"{node}: {why}" for node, why in outcome.failed.items()),
                request_id=outcome.request_id,
            )
        if secagg is not None:
            average, survivors = await secagg.fedavg(number - 1, usable)
            usable = {node: usable[node] for node in survivors}
            self.params = self.strategy.step(number, self.params, average)
        sizes = {node: int(reply.sample_size or 0) for node, reply in usable.items()}
        if secagg is None:
            updates = {
                node: NodeUpdate(
                    reply.params or {}, sizes[node], reply.metrics, reply.optim_aux_var or {}
                )
                for node, reply in usable.items()
            }
            self.params = self.strategy.aggregate(number, self.params, updates)
        metrics = {node: dict(reply.metrics) for node, reply in usable.items()}
        record = RoundRecord(
            round=number,
            nodes=sorted(usable),
            sample_sizes=sizes,
            metrics=metrics,
            aggregated_metrics=weighted_metrics(metrics, sizes),
            timings=outcome.timings,
            failed=outcome.failed,
            duration=time.monotonic() - started,
            request_id=outcome.request_id,
            secure_aggregation=secagg is not None,
            sampled=nodes,
            skipped=skipped,
        )
        logger.info("round %d: %s", number, record.aggregated_metrics)
        return record

    def _round_nodes(self, number: int) -> tuple[list[str], dict[str, str]]:
        """The round's nodes and, with a sampling, the unavailable nodes with the reason."""
        if self.sampling is None:
            return self.strategy.select(number, list(self.datasets), None), {}
        available, skipped = self.sampling.available(number, self.datasets, self.requests.presence)
        nodes = self.strategy.select(number, available, self.sampling)
        if not nodes or not set(nodes) <= set(available):
            raise ValueError(f"round {number}: the strategy chose {nodes} of {available}")
        logger.info("round %d: sampled %s, skipped %s", number, nodes, skipped)
        return nodes, skipped

    async def _secure_aggregation(self) -> SecureAggregation:
        """The experiment's secure aggregation, set up with every node on first use; round
        ``n`` of the experiment is round ``n - 1`` of its context."""
        if self.secure_aggregation is None:
            secagg = SecureAggregation(
                self.requests,
                experiment_id=self.experiment_id,
                nodes=list(self.datasets),
                rounds=self.rounds,
                **self.secagg_options,
            )
            await secagg.setup()
            self.secure_aggregation = secagg
        return self.secure_aggregation

    def save(self, result: ExperimentResult) -> Path:
        """Write the final model (``model.npz``), the best one (``best.npz``) when there was an
        evaluation, and the round metrics (``rounds.json``)."""
        assert self.output_dir is not None
        folder = self.output_dir / self.experiment_id
        folder.mkdir(parents=True, exist_ok=True)
        model_path = folder / "model.npz"
        np.savez(model_path, **result.params)  # type: ignore[arg-type]
        if result.best is not None:
            np.savez(folder / "best.npz", **result.best.params)  # type: ignore[arg-type]
        rounds = [
            {**asdict(record), "timings": {n: asdict(t) for n, t in record.timings.items()}}
            for record in result.rounds
        ]
        (folder / "rounds.json").write_text(json.dumps(rounds, indent=2, default=str))
        return model_path
