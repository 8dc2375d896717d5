"""Run a training plan in a sandboxed child process with a time limit.

The plan is user code: a crash, a hang or a ``sys.exit`` in it must never take the agent down,
and what it may reach is limited (see :mod:`node_agent.sandbox`). :func:`run_training` encodes
a msgpack job and hands it to a plan worker: a fresh one (``python -m node_agent._plan_worker``
in its own process group, namespaces and private folder), or the warm worker of the same
experiment and plan (see :mod:`node_agent.plan_workers`). It waits at most ``timeout`` seconds
for the msgpack result; on timeout or cancellation the worker and everything it started are
killed. What the plan prints goes to a log kept for the node's operator (its head and tail
only), never to the researcher.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

import anyio.to_thread
import numpy as np
import numpy.typing as npt

from broker_net.codec import encode
from node_agent.datasets import Table
from node_agent.plan_process import ProgressCallback, WorkerLostError
from node_agent.plan_workers import PlanWorkers, WorkerTimeoutError
from node_agent.plans import PlanInvalidError, compute_plan_id
from node_agent.sandbox import SandboxPolicy

logger = logging.getLogger(__name__)

DEFAULT_VALIDATION_FRACTION = 0.2
"""Share of the rows held out to evaluate the plan after local training."""


class PlanRunError(Exception):
    """Raised when a training plan could not produce a result; the message is safe to send."""


class PlanFailedError(PlanRunError):
    """Raised when the plan's code raised, or its process died.

    Attributes:
        stage: where it failed: ``load``, ``init``, ``set_params``, ``train``, ``evaluate``,
            ``get_params`` or ``process``.
        error_type: the exception's class name, empty when the process died.
        traceback: the plan's traceback, for the node's log only.
        output: the end of what the process printed, for the node's log only.
    """

    def __init__(
        self,
        message: str,
        *,
        stage: str,
        error_type: str = "",
        traceback: str = "",
        output: str = "",
    ) -> None:
        super().__init__(message)
        self.stage = stage
        self.error_type = error_type
        self.traceback = traceback
        self.output = output


class PlanTimeoutError(PlanRunError, TimeoutError):
    """Raised when the plan runs longer than its time limit; its process has been killed."""


class TrainingDataError(ValueError):
    """Raised when a table cannot be trained on: no target column, missing values, no rows."""


@dataclass(frozen=True)
class TrainingOutcome:
    """What one training (or validation-only) run produced."""

    params: dict[str, npt.NDArray[Any]]
    sample_size: int
    metrics: dict[str, float]
    timing: dict[str, float] = field(default_factory=dict)
    aux_var: dict[str, Any] = field(default_factory=dict)
    """The plan's optimizer auxiliary variables for the researcher, if it has any."""


def check_training_table(table: Table, target: str) -> None:
    """Check that ``table`` can be split into features and a ``target`` column.

    Raises:
        TrainingDataError: no such column, no rows, or missing values.
    """
    if target not in table.columns:
        raise TrainingDataError(f"the dataset has no numeric target column {target!r}")
    if table.n_rows == 0:
        raise TrainingDataError("the dataset has no rows")
    missing = np.isnan(table.values).sum(axis=0)
    holes = [f"{name} ({int(n)})" for name, n in zip(table.columns, missing, strict=True) if n]
    if holes:
        raise TrainingDataError(
            "the training data has missing values in " + ", ".join(holes) + "; impute them first"
        )


async def run_training(
    source: str,
    class_name: str,
    *,
    table: Table,
    target: str,
    params: Mapping[str, Any],
    training_args: Mapping[str, Any],
    model_args: Mapping[str, Any],
    timeout: float,
    training: bool = True,
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
    split_seed: int = 0,
    aux_var: Mapping[str, Any] | None = None,
    sandbox: SandboxPolicy | None = None,
    workers: PlanWorkers | None = None,
    reuse_key: tuple[Hashable, ...] | None = None,
    on_progress: ProgressCallback | None = None,
) -> TrainingOutcome:
    """Train (or only evaluate) the plan class ``class_name`` of ``source`` on ``table``.

    The features are every column but ``target``. A seeded split keeps ``validation_fraction``
    of the rows for evaluation; the plan trains on the rest, starting from ``params`` (its own
    initial parameters when empty) and given ``aux_var``, the researcher's optimizer auxiliary
    variables, when there are any. ``sample_size`` is the number of rows trained on, or
    evaluated on when ``training`` is false. ``timing`` holds ``rtime_training`` and
    ``ptime_training`` (wall and CPU seconds of ``train`` in the child) and ``rtime_process``
    (wall seconds of the round in the child process, with its start when it is fresh).

    With ``workers`` (a node's, see :func:`node_agent.plan_workers.plan_workers_for`) and a
    ``reuse_key`` (e.g. researcher, experiment and dataset), the round runs on the warm worker
    of that key and plan, in the workers' sandbox. Otherwise it runs in a fresh process under
    ``sandbox``, by default :meth:`SandboxPolicy.limits_only`: limits, a minimal environment
    and a private folder, but the caller's user and network.

    What the plan reports with :meth:`~training_plans.plan.TrainingPlan.report_progress` goes
    to ``on_progress`` (from a worker thread: it must return at once), unchecked.

    Raises:
        TrainingDataError: the table cannot be trained on (see :func:`check_training_table`).
        PlanTimeoutError: the plan ran longer than ``timeout`` seconds.
        PlanFailedError: the plan raised, or its process died.
    """
    check_training_table(table, target)
    job = {
        "source": source,
        "class_name": class_name,
        "params": dict(params),
        "training_args": dict(training_args),
        "model_args": dict(model_args),
        "training": training,
        "columns": table.columns,
        "values": table.values,
        "target": target,
        "validation_fraction": validation_fraction,
        "split_seed": split_seed,
        "aux_var": dict(aux_var or {}),
    }
    result, output, elapsed = await _run_job(job, timeout, sandbox, workers, reuse_key, on_progress)
    return _outcome(result, output, elapsed)


@dataclass(frozen=True)
class PredictionOutcome:
    """One prediction per row, and whether they are classes (else values)."""

    predictions: npt.NDArray[np.float64]
    classifier: bool


async def run_prediction(
    source: str,
    class_name: str,
    *,
    table: Table,
    target: str | None,
    params: Mapping[str, Any],
    model_args: Mapping[str, Any],
    timeout: float,
    sandbox: SandboxPolicy | None = None,
    workers: PlanWorkers | None = None,
    reuse_key: tuple[Hashable, ...] | None = None,
) -> PredictionOutcome:
    """Predict with the plan class ``class_name`` of ``source`` and ``params`` on every row of
    ``table``, its features being every column but ``target``; in a plan worker as
    :func:`run_training` runs one.

    Raises:
        TrainingDataError: no rows, or missing values in the features.
        PlanTimeoutError: the plan ran longer than ``timeout`` seconds.
        PlanFailedError: the plan raised (it has no ``predict``), or its process died.
    """
    columns = [name for name in table.columns if name != target]
    features = Table(columns, table.values[:, [table.columns.index(c) for c in columns]])
    if features.n_rows == 0 or not columns:
        raise TrainingDataError("the dataset has no rows or no feature columns")
    holes = [name for name in columns if np.isnan(features.column(name)).any()]
    if holes:
        raise TrainingDataError(f"the features have missing values in {', '.join(holes)}")
    job = {
        "task": "predict", "source": source, "class_name": class_name, "params": dict(params),
        "model_args": dict(model_args), "columns": columns, "values": features.values,
    }  # fmt: skip
    result, output, _ = await _run_job(job, timeout, sandbox, workers, reuse_key)
    if not result.get("ok"):
        _outcome(result, output, 0.0)  # raises the plan's failure
    try:
        predictions = np.asarray(result["predictions"], dtype=np.float64)
        if predictions.shape != (features.n_rows,):
            raise ValueError(f"shape {predictions.shape}")
        return PredictionOutcome(predictions, bool(result["classifier"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise PlanFailedError(
            f"the training plan's process sent a malformed prediction ({exc!r})",
            stage="process", output=output,
        ) from None  # fmt: skip


async def _run_job(
    job: dict[str, Any],
    timeout: float,
    sandbox: SandboxPolicy | None,
    workers: PlanWorkers | None,
    reuse_key: tuple[Hashable, ...] | None,
    on_progress: ProgressCallback | None = None,
) -> tuple[dict[str, Any], str, float]:
    """Run ``job`` on a plan worker: its result, what it printed and the seconds it took."""
    payload = await anyio.to_thread.run_sync(encode, job)
    if workers is None or reuse_key is None:
        workers = PlanWorkers(sandbox or SandboxPolicy.limits_only(), size=0)
        reuse_key = ()
    plan_id = _plan_id(job["source"])
    key = (*reuse_key, plan_id, job["class_name"])
    started = time.perf_counter()
    try:
        result, output = await workers.run(
            key, plan_id, payload, timeout=timeout, on_progress=on_progress
        )
    except WorkerTimeoutError:
        logger.warning("training plan timed out after %g s; killed it", timeout)
        raise PlanTimeoutError(
            f"the training plan ran longer than {timeout:g} s and was stopped"
        ) from None
    except WorkerLostError as exc:
        _lost(exc)
    return result, output, time.perf_counter() - started


def _plan_id(source: str) -> str:
    try:
        return compute_plan_id(source)
    except PlanInvalidError:  # the worker reports it as a failure to load
        return hashlib.sha256(source.encode()).hexdigest()


def _lost(error: WorkerLostError) -> NoReturn:
    logger.warning("training plan process %s; output:\n%s", error.how, error.output)
    if "SIGXCPU" in error.how:
        raise PlanTimeoutError("the training plan used up its CPU time and was stopped")
    raise PlanFailedError(
        f"the training plan's process {error.how} without a result",
        stage="process",
        output=error.output,
    )


def _outcome(result: dict[str, Any], output: str, elapsed: float) -> TrainingOutcome:
    if not result.get("ok"):
        message = f"the training plan failed in {result.get('stage')}: {result.get('error_type')}: "
        logger.warning("%s%s\n%s", message, result.get("message"), result.get("traceback"))
        raise PlanFailedError(
            message + str(result.get("message")),
            stage=str(result.get("stage")),
            error_type=str(result.get("error_type")),
            traceback=str(result.get("traceback")),
            output=output,
        )
    try:  # the worker checked all this, unless the plan took over its process
        return TrainingOutcome(
            params=dict(result["params"]),
            sample_size=int(result["sample_size"]),
            metrics={str(k): float(v) for k, v in result["metrics"].items()},
            timing={
                **{str(k): float(v) for k, v in result["timing"].items()},
                "rtime_process": elapsed,
            },
            aux_var=dict(result.get("aux_var") or {}),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise PlanFailedError(
            f"the training plan's process sent a malformed result ({exc!r})",
            stage="process",
            output=output,
        ) from None
