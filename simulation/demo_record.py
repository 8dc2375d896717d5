"""The demo's run as a job of the researcher's job store, so that ``researcher dashboard`` (and
``researcher jobs`` and ``output``) shows it.

The demo drives its steps itself rather than through the scheduler, so :class:`DemoRecord`
writes what the scheduler would: a job whose spec names the demo's steps as tasks
(``approve``, ``check``, ``stats``, ``scale``, ``train``), each task's state as the story
reaches it, the nodes and their datasets, each FedAvg round's request while it runs, each
finished round with every node's part and its model, and the progress the nodes report while
they train.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio.to_thread
import numpy as np

from researcher.jobs.experiment import RoundRecord
from researcher.orchestration.fedjob import FedJob
from researcher.orchestration.lifecycle import State
from researcher.orchestration.spec import JobSpec
from researcher.orchestration.store.job_store import JobStore
from researcher.orchestration.store.records import ProgressRecord, RoundRow, now_text
from researcher.orchestration.task_specs import (
    AnalyticsTask,
    PlanApprovalTask,
    PlanCheckTask,
    PreprocessingTask,
    TrainingTask,
)
from researcher.orchestration.training_task import round_results, save_params
from researcher.requests.hooks import RequestHooks
from researcher.requests.progress import ProgressEvent
from simulation.demo_plan import BreastCancerPlan

logger = logging.getLogger(__name__)

JOB_NAME = "demo-breast-cancer"
TRAIN = "train"


def demo_spec(rounds: int, training_args: Mapping[str, Any], *, secagg: bool) -> JobSpec:
    """The demo's steps as a job spec: approval and check, analytics, standardisation with
    its statistics, then the FedAvg rounds."""
    job = FedJob(JOB_NAME)
    plan = job.plan(BreastCancerPlan)
    job.to_nodes(PlanApprovalTask(name="approve", plan=plan))
    job.to_nodes(PlanCheckTask(name="check", plan=plan, depends_on=["approve"]))
    stats = job.to_nodes(
        AnalyticsTask(name="stats", stats=["count", "mean", "std", "min", "max"],
                      exclude_columns=["target"])
    )  # fmt: skip
    scale = job.to_nodes(
        PreprocessingTask(
            name="scale", preproc_type="standardize",
            inputs={"preproc_args.mean": stats.output("mean"),
                    "preproc_args.std": stats.output("std")},
        )
    )  # fmt: skip
    job.to_nodes(
        TrainingTask(
            name=TRAIN, plan=plan, rounds=rounds, depends_on=["check"], secagg=secagg,
            training_args=dict(training_args),
            inputs={"state_ids": scale.output("state_ids"),
                    "model_args.n_features": stats.output("n_features")},
        )
    )  # fmt: skip
    return job.spec


class DemoRecord:
    """The demo's job in the job store of ``data_dir``, from its start to its end.

    Use it as a context manager: the job runs while inside (or until :meth:`finish`); it ends
    ``success``, or ``failed`` (its unfinished tasks canceled) when the demo fails.
    """

    def __init__(
        self, data_dir: Path, researcher_id: str, *, rounds: int,
        training_args: Mapping[str, Any], secagg: bool,
    ) -> None:  # fmt: skip
        self.rounds = rounds
        self.store = JobStore(data_dir)
        spec = demo_spec(rounds, training_args, secagg=secagg)
        self.job_id = self.store.create_job(spec, researcher_id=researcher_id).job_id
        self.store.claim(self.job_id)
        self.store.set_job_state(self.job_id, State.RUNNING, "the demo is running")
        self._finished = False

    def __enter__(self) -> DemoRecord:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _: Any
    ) -> None:
        self.finish(error)

    def finish(self, error: BaseException | None = None) -> None:
        """End the job: ``success``, or ``failed`` with ``error`` (its unfinished tasks
        canceled); then close the store. Only the first call counts."""
        if self._finished:
            return
        self._finished = True
        try:
            if error is None:
                self.store.set_job_state(self.job_id, State.SUCCESS, "the demo finished")
            else:
                reason = f"the demo failed: {type(error).__name__}: {error}"
                for task in self.store.tasks(self.job_id):
                    if not task.state.finished:
                        self.store.set_task_state(self.job_id, task.name, State.CANCELED, reason)
                self.store.set_job_state(self.job_id, State.FAILED, reason)
            self.store.release(self.job_id)
        finally:
            self.store.close()

    def nodes(self, datasets: Mapping[str, str]) -> None:
        """The nodes the demo runs on, with their datasets."""
        self.store.set_job_nodes(self.job_id, sorted(datasets), datasets)
        self.store.set_job_reason(self.job_id, f"running on {', '.join(sorted(datasets))}")

    @contextmanager
    def task(self, name: str, reason: str = "done") -> Iterator[None]:
        """Task ``name`` runs while inside; it succeeds with ``reason``, or fails."""
        self.store.set_task_state(self.job_id, name, State.RUNNING, "started")
        try:
            yield
        except BaseException as exc:
            self.store.set_task_state(self.job_id, name, State.FAILED, str(exc) or repr(exc))
            raise
        self.store.set_task_state(self.job_id, name, State.SUCCESS, reason)

    def hooks(self, number: int) -> RequestHooks:
        """Hooks recording round ``number``'s request while it runs."""
        store, job_id = self.store, self.job_id
        return RequestHooks(
            on_sending=lambda rid, nodes: store.record_request(
                job_id, TRAIN, 1, f"round-{number}", rid, nodes
            ),
            on_sent=store.record_sent,
            on_answer=store.record_answer,
        )

    def round(self, record: RoundRecord, params: Mapping[str, Any]) -> None:
        """A finished round: its nodes' parts, metrics and model."""
        path = save_params(
            self.store.model_dir(self.job_id, TRAIN, 1) / f"round-{record.round}.npz",
            {name: np.asarray(value) for name, value in params.items()},
        )
        row = RoundRow(TRAIN, 1, record.round, record.request_id, record.aggregated_metrics,
                       record.failed, record.duration, now_text())  # fmt: skip
        self.store.commit_round(
            self.job_id, TRAIN, 1, row, round_results(record), path, self.rounds
        )

    async def progress(self, event: ProgressEvent) -> None:
        """A node's progress while it trains (a monitor of the experiment)."""
        kept = ProgressRecord(
            id=0, job_id=self.job_id, task=TRAIN, round=event.round, node_id=event.node_id,
            request_id=event.request_id, at=event.sent_at, values=dict(event.values),
        )  # fmt: skip
        try:
            await anyio.to_thread.run_sync(self.store.add_progress, self.job_id, TRAIN, kept)
        except Exception as exc:
            logger.warning("demo job %s: progress not stored: %s", self.job_id, exc)
