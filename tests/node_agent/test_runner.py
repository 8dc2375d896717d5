"""Running training plans in a child process: results, failures, hangs."""

from __future__ import annotations

import contextlib
import os
import textwrap
import time
from pathlib import Path

import anyio
import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from node_agent.datasets import Table
from node_agent.runner import (
    PlanFailedError,
    PlanTimeoutError,
    TrainingDataError,
    check_training_table,
    run_training,
)
from training_plans.logistic import LogisticRegressionPlan
from training_plans.plan import plan_source

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def table() -> Table:
    x, y = load_breast_cancer(return_X_y=True)
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    return Table([f"c{j}" for j in range(x.shape[1])] + ["y"], np.column_stack([x, y]))


def plan(body: str, *, header: str = "") -> str:
    """Source of a plan class ``P`` built on the ready logistic regression."""
    return (
        textwrap.dedent(header)
        + "\nfrom training_plans.logistic import LogisticRegressionPlan\n\n"
        + "class P(LogisticRegressionPlan):\n"
        + textwrap.indent(textwrap.dedent(body), "    ")
    )


async def run(source: str, table: Table, *, class_name: str = "P", timeout: float = 30, **kw):
    return await run_training(
        source,
        class_name,
        table=table,
        target="y",
        params=kw.pop("params", {}),
        training_args=kw.pop("training_args", {"epochs": 2}),
        model_args={},
        timeout=timeout,
        **kw,
    )


async def test_training_returns_params_sample_size_metrics_and_timing(table):
    outcome = await run(
        plan_source(LogisticRegressionPlan), table, class_name="LogisticRegressionPlan"
    )

    assert set(outcome.params) == {"coef", "intercept"}
    assert outcome.params["coef"].shape == (30,)
    assert outcome.sample_size == table.n_rows - round(table.n_rows * 0.2)
    assert outcome.metrics["accuracy"] > 0.9
    assert {"loss", "train_loss"} <= set(outcome.metrics)
    assert set(outcome.timing) == {"rtime_training", "ptime_training", "rtime_process"}
    assert 0 <= outcome.timing["rtime_training"] <= outcome.timing["rtime_process"]


async def test_runs_are_deterministic_and_validation_only_keeps_params(table):
    source = plan_source(LogisticRegressionPlan)
    first = await run(source, table, class_name="LogisticRegressionPlan")
    second = await run(source, table, class_name="LogisticRegressionPlan")
    np.testing.assert_array_equal(first.params["coef"], second.params["coef"])

    checked = await run(
        source, table, class_name="LogisticRegressionPlan", params=first.params, training=False
    )
    np.testing.assert_array_equal(checked.params["coef"], first.params["coef"])
    assert checked.sample_size == round(table.n_rows * 0.2)
    assert checked.metrics["accuracy"] == first.metrics["accuracy"]
    assert "train_loss" not in checked.metrics
    assert set(checked.timing) == {"rtime_process"}


async def test_an_exception_in_the_plan_is_a_typed_error_without_traceback(table):
    source = plan(
        """
        def train(self, x, y, training_args):
            raise ValueError("the learning rate is too high")
        """
    )
    with pytest.raises(PlanFailedError) as caught:
        await run(source, table)

    error = caught.value
    assert error.stage == "train"
    assert error.error_type == "ValueError"
    assert "the learning rate is too high" in str(error)
    assert "Traceback" not in str(error)
    assert "Traceback" in error.traceback


@pytest.mark.parametrize(
    ("source", "stage", "error_type"),
    [
        ("class P:\n    pass\n", "load", "TypeError"),
        ("import no_such_module_anywhere\n", "load", "ModuleNotFoundError"),
        (plan("def init_model(self, model_args):\n    raise KeyError('n')\n"), "init", "KeyError"),
        (
            plan("def train(self, x, y, a):\n    import sys\n    sys.exit(4)\n"),
            "train",
            "SystemExit",
        ),
        (plan("def evaluate(self, x, y):\n    return {'loss': 'bad'}\n"), "evaluate", "TypeError"),
        (plan("def get_params(self):\n    return {'w': ['a']}\n"), "get_params", "TypeError"),
    ],
)
async def test_failures_at_every_stage_are_reported(table, source, stage, error_type):
    with pytest.raises(PlanFailedError) as caught:
        await run(source, table)
    assert (caught.value.stage, caught.value.error_type) == (stage, error_type)


async def test_a_process_that_dies_is_a_typed_error(table):
    source = plan("def train(self, x, y, a):\n    print('going')\n    import os\n    os._exit(3)\n")
    with pytest.raises(PlanFailedError, match=r"exited \(3\)") as caught:
        await run(source, table)
    assert caught.value.stage == "process"
    assert "going" in caught.value.output


async def test_a_hanging_plan_is_killed_at_its_deadline(table, tmp_path: Path):
    # The deadline counts from the call and so includes the fresh worker's start (an
    # interpreter, numpy, the codec), which takes seconds on a loaded host: it leaves room for
    # that, and the plan says when its endless loop begins.
    deadline = 15.0
    pid_file = tmp_path / "pid"
    source = plan(
        f"""
        def train(self, x, y, a):
            import os
            with open({str(pid_file)!r} + ".part", "w") as out:
                out.write(str(os.getpid()))
            os.replace({str(pid_file)!r} + ".part", {str(pid_file)!r})
            while True:
                pass
        """
    )
    errors: list[PlanTimeoutError] = []
    ended = 0.0

    async def train() -> None:
        nonlocal ended
        try:
            await run(source, table, timeout=deadline)
        except PlanTimeoutError as exc:
            errors.append(exc)
        ended = time.monotonic()

    started = time.monotonic()
    with anyio.fail_after(deadline + 60):
        async with anyio.create_task_group() as group:
            group.start_soon(train)
            pid = await _pid_written_by_the_plan(pid_file, timeout=deadline)
            running = time.monotonic() - started

    assert len(errors) == 1, "the hanging plan was not stopped by its deadline"
    assert isinstance(errors[0], TimeoutError)
    assert f"longer than {deadline:g} s" in str(errors[0])
    # Stopped while it looped, at its deadline: not before, and not long after.
    stopped = ended - started
    assert running < deadline <= stopped <= deadline + 10, (running, stopped)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_cancelling_the_caller_kills_the_plan(table, tmp_path: Path):
    pid_file = tmp_path / "pid"
    source = plan(
        "def train(self, x, y, a):\n    import time\n    time.sleep(60)\n",
        header=f"import os\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\n",
    )
    finished = False

    async def train() -> None:
        nonlocal finished
        await run(source, table, timeout=60)
        finished = True

    async with anyio.create_task_group() as group:
        group.start_soon(train)
        # Cancel once the plan is running (its process may take long to start on a busy host).
        pid = await _pid_written_by_the_plan(pid_file, timeout=60)
        group.cancel_scope.cancel()

    assert not finished
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def _pid_written_by_the_plan(pid_file: Path, *, timeout: float) -> int:
    """The process id the plan wrote to ``pid_file``, once it is there in full."""
    with anyio.fail_after(timeout):
        while True:
            with contextlib.suppress(FileNotFoundError, ValueError):
                return int(await anyio.Path(pid_file).read_text())
            await anyio.sleep(0.05)


async def test_the_plan_output_and_files_stay_out_of_the_caller(table, capfd):
    source = plan(
        """
        def train(self, x, y, training_args):
            print("hello from the plan")
            open("written-by-plan.txt", "w").close()
            return super().train(x, y, training_args)
        """
    )
    outcome = await run(source, table)
    assert outcome.sample_size > 0
    assert "hello from the plan" not in capfd.readouterr().out
    assert not (Path.cwd() / "written-by-plan.txt").exists()


def test_tables_with_missing_values_or_no_target_are_refused(table):
    holes = Table(["a", "y"], np.array([[1.0, 0.0], [np.nan, 1.0]]))
    with pytest.raises(TrainingDataError, match=r"a \(1\)"):
        check_training_table(holes, "y")
    with pytest.raises(TrainingDataError, match="target"):
        check_training_table(table, "label")
    with pytest.raises(TrainingDataError, match="no rows"):
        check_training_table(Table(["y"], np.zeros((0, 1))), "y")
