"""FedJob: building, validating and exporting specs; simulating them in one process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from researcher.orchestration.fedjob import FedJob, JobResult
from researcher.orchestration.lifecycle import State
from researcher.orchestration.spec import JobSpec, SimulatedDataset
from researcher.orchestration.task_specs import (
    AnalyticsTask,
    PlanApprovalTask,
    PlanCheckTask,
    PreprocessingTask,
    SpecError,
    TrainingTask,
)
from simulation.demo_plan import BreastCancerPlan
from simulation.federation import simulate, simulate_async
from simulation.sample_data import TARGET, write_shard_csv
from tests.researcher.orchestration.test_scheduler import training_job

pytestmark = pytest.mark.anyio


def test_export_writes_a_spec_that_loads_back_the_same(tmp_path: Path) -> None:
    job = training_job("exported", rounds=3, priority=4, auto_retries=2, task_timeout=90,
                       parallelism=2, min_nodes=2, mandatory_nodes=["n1"])  # fmt: skip

    path = job.export(tmp_path)

    assert path == tmp_path / "exported.yaml"
    text = path.read_text()
    assert "class_name: BreastCancerPlan" in text and "source: |" in text
    raw = yaml.safe_load(text)
    assert raw["conf"]["priority"] == 4 and raw["conf"]["mandatory_nodes"] == ["n1"]
    assert raw["tasks"][3]["inputs"]["preproc_args.mean"] == {"task": "stats", "key": "mean"}
    loaded = JobSpec.load(path)
    assert loaded == job.spec
    assert loaded.order().index("stats") < loaded.order().index("scale")
    assert "class BreastCancerPlan" in loaded.plans["BreastCancerPlan"].source


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda job: job.to_nodes(AnalyticsTask(name="stats")), "another task named 'stats'"),
        (lambda job: job.to_nodes(PlanCheckTask(name="c", plan="Nope")), "unknown plan 'Nope'"),
        (lambda job: job.tasks["approve"].depends_on.append("train"), "form a cycle"),
        (lambda job: job.tasks["stats"].depends_on.append("ghost"), "unknown task 'ghost'"),
        (lambda job: job.tasks["stats"].output("state_ids"), "has no output 'state_ids'"),
        (lambda job: job.tasks.update(x=AnalyticsTask(name="x")), "placed on no node"),
    ],
)
def test_an_invalid_job_is_refused_with_the_reason(change, message: str) -> None:  # type: ignore[no-untyped-def]
    job = training_job()
    with pytest.raises(SpecError, match=message):
        change(job)
        job.spec  # noqa: B018 (validates)


def test_an_input_must_fill_a_parameter_the_task_has() -> None:
    stats = AnalyticsTask(name="stats", nodes="all")
    with pytest.raises(ValueError, match="fills no parameter of a preprocessing task"):
        PreprocessingTask(
            name="p", preproc_type="standardize", inputs={"rounds": stats.output("mean")}
        )


def test_a_spec_file_with_mistakes_says_where(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "name: bad\ndatasets: {tags: [x]}\ntasks:\n- {kind: training, name: t, nodes: all}\n"
    )
    with pytest.raises(SpecError, match=r"tasks\.0\.training\.plan"):
        JobSpec.load(path)
    path.write_text("- just a list")
    with pytest.raises(SpecError, match="a job spec is a mapping"):
        JobSpec.load(path)
    with pytest.raises(SpecError, match="cannot read"):
        JobSpec.load(tmp_path / "missing.yaml")


async def test_the_exported_spec_simulates_like_the_python_job(tmp_path: Path) -> None:
    job = training_job("same", rounds=2, parallelism=2)
    from_python = await simulate_async(job, 3)
    from_file = await simulate_async(FedJob.from_spec(JobSpec.load(job.export(tmp_path))), 3)

    for result in (from_python, from_file):
        assert result.state is State.SUCCESS, result.reason
        assert [r.round for r in result.rounds["train"]] == [1, 2]
    assert from_python.outputs["stats"] == from_file.outputs["stats"]
    for name, value in from_python.models["train"].items():
        np.testing.assert_allclose(from_file.models["train"][name], value, rtol=1e-12)
    for a, b in zip(from_python.rounds["train"], from_file.rounds["train"], strict=True):
        assert a.metrics == pytest.approx(b.metrics, rel=1e-12)
    assert from_python.rounds["train"][-1].metrics["accuracy"] > 0.9


async def test_simulated_nodes_can_register_the_datasets_the_spec_names(tmp_path: Path) -> None:
    files = {}
    for index, node in enumerate(["left", "right"]):
        files[node] = tmp_path / f"{node}.csv"
        write_shard_csv(files[node], index, 2)
    job = FedJob(
        "own-data", dataset_tags=["mine"],
        simulation_datasets={n: SimulatedDataset(path=p, target=TARGET) for n, p in files.items()},
    )  # fmt: skip
    stats = job.to_nodes(
        AnalyticsTask(name="stats", stats=["count", "mean"], exclude_columns=[TARGET])
    )
    plan = job.plan(BreastCancerPlan)
    job.to_nodes(PlanApprovalTask(name="approve", plan=plan))
    job.to_nodes(
        TrainingTask(name="train", plan=plan, rounds=1, depends_on=["approve"],
                     inputs={"model_args.n_features": stats.output("n_features")},
                     training_args={"epochs": 1})
    )  # fmt: skip
    spec = JobSpec.load(job.export(tmp_path / "spec.yaml"))

    result = await simulate_async(FedJob.from_spec(spec), workspace=tmp_path / "workspace")

    assert result.state is State.SUCCESS, result.reason
    assert result.outputs["stats"]["statistics"]["nodes"] == 2
    assert result.outputs["stats"]["n_rows"] == sum(
        len(path.read_text().splitlines()) - 1 for path in files.values()
    )
    assert sorted(result.rounds["train"][0].metrics) == ["accuracy", "loss", "train_loss"]
    assert (tmp_path / "workspace" / "researcher" / "jobs.sqlite").exists()


def test_simulate_needs_nodes() -> None:
    with pytest.raises(ValueError, match="give n_nodes"):
        simulate(training_job())


def test_the_python_example_of_the_jobs_guide_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    guide = (Path(__file__).parents[3] / "docs" / "jobs.md").read_text()
    example = guide.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}

    exec(compile(example, "docs/jobs.md", "exec"), namespace)

    result = namespace["result"]
    assert isinstance(result, JobResult) and result.state is State.SUCCESS, result
    assert JobSpec.load(tmp_path / "breast-cancer.yaml") == namespace["job"].spec  # type: ignore[attr-defined]
    assert len(result.rounds["train"]) == 5
