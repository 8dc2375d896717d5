"""Run a training plan in a child process with a time limit.

The plan is user code: a crash, a hang or a ``sys.exit`` in it must never take the agent down.
:func:`run_training` writes a msgpack job file, starts ``python -m node_agent._plan_worker`` in
its own process group and a private temporary folder, waits at most ``timeout`` seconds and
reads the msgpack result file. On timeout or cancellation the whole process group is killed.
What the plan prints goes to a log kept for the node's operator, never to the researcher.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import numpy as np
import numpy.typing as npt

from broker_net.codec import decode, encode
from broker_net.errors import DecodeError
from node_agent.datasets import Table

logger = logging.getLogger(__name__)

DEFAULT_VALIDATION_FRACTION = 0.2
"""Share of the rows held out to evaluate the plan after local training."""

_OUTPUT_TAIL = 4000
_PACKAGE_ROOT = Path(__file__).resolve().parents[1]


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
) -> TrainingOutcome:
    """Train (or only evaluate) the plan class ``class_name`` of ``source`` on ``table``.

    The features are every column but ``target``. A seeded split keeps ``validation_fraction``
    of the rows for evaluation; the plan trains on the rest, starting from ``params`` (its own
    initial parameters when empty) and given ``aux_var``, the researcher's optimizer auxiliary
    variables, when there are any. ``sample_size`` is the number of rows trained on, or
    evaluated on when ``training`` is false. ``timing`` holds ``rtime_training`` and
    ``ptime_training`` (wall and CPU seconds of ``train`` in the child) and ``rtime_process``
    (wall seconds of the whole child process).

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
    with tempfile.TemporaryDirectory(prefix="broker-net-plan-") as folder:
        work = Path(folder)
        await anyio.to_thread.run_sync(_write_job, work / "job.mpk", job)
        started = time.perf_counter()
        returncode = await _run_worker(work, timeout)
        elapsed = time.perf_counter() - started
        result = await anyio.to_thread.run_sync(_read_result, work, returncode)
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


def _write_job(path: Path, job: dict[str, Any]) -> None:
    path.write_bytes(encode(job))


async def _run_worker(work: Path, timeout: float) -> int:
    command = [sys.executable, "-m", "node_agent._plan_worker", "job.mpk", "result.mpk"]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_PACKAGE_ROOT), env.get("PYTHONPATH")]))
    with (work / "output.log").open("wb") as output:
        process = await anyio.open_process(
            command,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            cwd=work,
            env=env,
            start_new_session=True,
        )
        try:
            with anyio.fail_after(timeout):
                return await process.wait()
        except TimeoutError:
            logger.warning("training plan timed out after %g s; killing it", timeout)
            raise PlanTimeoutError(
                f"the training plan ran longer than {timeout:g} s and was stopped"
            ) from None
        finally:
            with anyio.CancelScope(shield=True):
                if process.returncode is None:
                    _kill_group(process)
                await process.aclose()


def _kill_group(process: anyio.abc.Process) -> None:
    try:
        if hasattr(os, "killpg"):
            os.killpg(process.pid, signal.SIGKILL)
        else:  # pragma: no cover - no process groups outside POSIX
            process.kill()
    except ProcessLookupError:
        pass


def _read_result(work: Path, returncode: int) -> dict[str, Any]:
    output = _tail(work / "output.log")
    try:
        result = decode((work / "result.mpk").read_bytes())
    except (OSError, DecodeError):
        how = f"was killed by signal {-returncode}" if returncode < 0 else f"exited ({returncode})"
        logger.warning("training plan process %s; output:\n%s", how, output)
        raise PlanFailedError(
            f"the training plan's process {how} without a result", stage="process", output=output
        ) from None
    if not result.get("ok"):
        message = f"the training plan failed in {result['stage']}: {result['error_type']}: "
        logger.warning("%s%s\n%s", message, result["message"], result["traceback"])
        raise PlanFailedError(
            message + str(result["message"]),
            stage=str(result["stage"]),
            error_type=str(result["error_type"]),
            traceback=str(result["traceback"]),
            output=output,
        )
    return dict(result)


def _tail(path: Path) -> str:
    try:
        data = path.read_bytes()[-_OUTPUT_TAIL:]
    except OSError:
        return ""
    return data.decode("utf-8", errors="replace")
