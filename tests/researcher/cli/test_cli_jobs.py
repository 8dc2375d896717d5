"""``researcher job`` and ``researcher output`` on a finished job, text and JSON."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner, Result

from researcher.cli.jobs import standalone_app
from researcher.orchestration.fedjob import JobResult
from simulation.federation import simulate
from tests.researcher.orchestration.test_scheduler import analytics_job, training_job

NODES = ["site-1", "site-2", "site-3"]


class Cli:
    """Runs the job and output commands against one researcher data folder."""

    def __init__(self, data_dir: Path) -> None:
        self.env = {"BROKER_NET_RESEARCHER_DATA_DIR": str(data_dir)}
        self.runner = CliRunner()
        self.app = standalone_app()

    def __call__(self, *args: str, code: int = 0) -> Result:
        result = self.runner.invoke(self.app, list(args), env=self.env)
        assert result.exit_code == code, result.output
        return result

    def json(self, *args: str, code: int = 0) -> Any:
        return json.loads(self(*args, "--json", code=code).stdout)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cli, JobResult]]:
    workspace = tmp_path_factory.mktemp("finished")
    result = simulate(training_job("cli", rounds=2, parallelism=2), 3, workspace=workspace)
    assert result.state.value == "success", result.reason
    yield Cli(workspace / "researcher"), result


def test_job_list_and_status(finished: tuple[Cli, JobResult]) -> None:
    cli, result = finished
    jobs = cli.json("job", "list")
    assert [(j["job_id"], j["state"], j["orphaned"]) for j in jobs] == [
        (result.job_id, "success", False)
    ]
    assert result.job_id in cli("job", "list").stdout

    status = cli.json("job", "status", result.job_id)
    assert status["reason"] == "all 5 tasks succeeded"
    assert {t["name"]: t["state"] for t in status["tasks"]} == dict.fromkeys(
        ["approve", "stats", "check", "scale", "train"], "success"
    )
    assert status["history"][-1] == {**status["history"][-1], "task": None, "to": "success"}
    assert "all 5 tasks succeeded" in cli("job", "status", result.job_id).stdout


def test_output_metrics(finished: tuple[Cli, JobResult]) -> None:
    cli, result = finished
    metrics = cli.json("output", "metrics", result.job_id)
    rounds = metrics["tasks"]["train"]["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    for stored, shown in zip(result.rounds["train"], rounds, strict=True):
        assert shown["metrics"] == stored.metrics and shown["request_id"] == stored.request_id
        assert sorted(shown["nodes"]) == NODES
        assert all(
            n["status"] == "SUCCESS" and n["round_trip"] > 0 for n in shown["nodes"].values()
        )
    assert "accuracy" in cli("output", "metrics", result.job_id, "--task", "train").stdout
    refused = cli("output", "metrics", result.job_id, "--task", "stats", code=2)
    assert "its results are in `researcher output data`" in refused.stderr


def test_output_data(finished: tuple[Cli, JobResult]) -> None:
    cli, result = finished
    data = cli.json("output", "data", result.job_id, "--task", "stats")
    stats = data["tasks"]["stats"]
    assert stats["outputs"] == result.outputs["stats"]
    assert sorted(n["node_id"] for n in stats["nodes"]) == NODES
    everything = cli.json("output", "data", result.job_id)
    assert sorted(everything["tasks"]["scale"]["outputs"]["state_ids"]) == NODES
    assert {n["slot"] for n in everything["tasks"]["scale"]["nodes"]} == {"fit", "apply"}
    assert "task train" in cli("output", "data", result.job_id).stdout


def test_output_model_downloads_the_model_files(
    finished: tuple[Cli, JobResult], tmp_path: Path
) -> None:
    cli, result = finished
    answer = cli.json("output", "model", result.job_id, "--download", str(tmp_path))
    folder = tmp_path / f"{result.job_id}_train"
    assert answer["directory"] == str(folder) and answer["rounds"] == 2
    assert sorted(p.name for p in folder.iterdir()) == [
        "model.npz", "round-0.npz", "round-1.npz", "round-2.npz", "rounds.json"
    ]  # fmt: skip
    with np.load(folder / "model.npz") as model:
        for name, value in result.models["train"].items():
            np.testing.assert_array_equal(model[name], value)
    assert len(json.loads((folder / "rounds.json").read_text())) == 2


def test_output_plot_draws_a_png(finished: tuple[Cli, JobResult], tmp_path: Path) -> None:
    cli, result = finished
    target = tmp_path / "metrics.png"
    answer = cli.json("output", "plot", result.job_id, "--out", str(target))
    assert answer == {"job_id": result.job_id, "plot": str(target)}
    content = target.read_bytes()
    assert content.startswith(b"\x89PNG") and len(content) > 10_000


def test_unknown_jobs_and_finished_jobs_are_refused(finished: tuple[Cli, JobResult]) -> None:
    cli, result = finished
    assert "no job has id 'job_nope'" in cli("job", "status", "job_nope", code=2).stderr
    assert "already success" in cli("job", "stop", result.job_id, code=2).stderr
    assert "nothing to resume" in cli("job", "resume", result.job_id, code=2).stderr


def test_a_queued_job_waits_with_its_reason_until_stopped(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "researcher")
    spec = analytics_job("queued", priority=3).export(tmp_path)

    queued = cli.json("job", "submit", str(spec), "--queue-only")
    assert queued["state"] == "waiting" and queued["reason"].startswith("queued")
    assert [j["job_id"] for j in cli.json("job", "list", "--state", "waiting")] == [
        queued["job_id"]
    ]
    stopped = cli.json("job", "stop", queued["job_id"])
    assert stopped["state"] == "canceled"
    assert cli.json("job", "status", queued["job_id"])["tasks"][0]["state"] == "canceled"
    assert cli.json("job", "list", "--state", "waiting") == []


def test_jobs_are_listed_without_reading_their_specs(tmp_path: Path) -> None:
    # A spec this version cannot read (stored by another) does not stop the listing.
    cli = Cli(tmp_path / "researcher")
    spec = analytics_job("unreadable", priority=2).export(tmp_path)
    queued = cli.json("job", "submit", str(spec), "--queue-only")
    with sqlite3.connect(tmp_path / "researcher" / "jobs.sqlite") as db:
        db.execute("UPDATE jobs SET spec = 'version: 99'")
    listed = cli.json("job", "list", "--state", "waiting")
    assert listed == [queued]
    table = cli("job", "list").stdout
    assert queued["job_id"] in table and "unreadable: queued" in table and "waiting" in table


def test_a_spec_with_mistakes_is_refused_before_anything_runs(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "researcher")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\n")
    assert "invalid job spec" in cli("job", "submit", str(bad), code=2).stderr


@pytest.mark.parametrize(
    ("mistake", "line"),
    [
        ("  initial_model: {model: worst}\n",
         "tasks[4].initial_model.model: must be 'final', 'best' or a whole number (got 'worst')"),
        ("  strategy: {name: FedFoo}\n",
         "tasks[4].strategy.name: must be 'fedavg', 'fedadagrad', 'fedadam', 'fedyogi', "
         "'fedprox' or 'scaffold' (got 'FedFoo')"),
        ("  rounds: two\n", "tasks[4].rounds: must be a whole number (got 'two')"),
        ("  nodes: [1, site-2]\n", "tasks[4].nodes[0]: must be a string (got 1)"),
    ],
)  # fmt: skip
def test_a_spec_mistake_is_named_by_its_place_and_what_is_allowed(
    tmp_path: Path, mistake: str, line: str
) -> None:
    cli = Cli(tmp_path / "researcher")
    spec = training_job("mistaken", rounds=2, parallelism=1).export(tmp_path)
    text = spec.read_text().replace("  rounds: 2\n", mistake + "  rounds: 2\n", 1)
    spec.write_text(text.replace("  rounds: 2\n", "", 1) if "rounds" in mistake else text)
    refused = cli("job", "submit", str(spec), "--queue-only", code=2)
    assert refused.stderr == f"error: invalid job spec: {line}\n"
