"""Over RabbitMQ, with node agent processes (security on): a job evaluated every round with a
best model, run from Python; a YAML spec submitted with ``researcher job submit`` that warm
starts from it under FedAdam, client sampling and secure aggregation, evaluates, and predicts,
leaving a dataset with its provenance on each node and a summary in ``researcher output``; an
encrypted prediction from the Python API; and the CLI's one-line refusals."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anyio
import pytest
import yaml
from typer.testing import CliRunner

from broker_net.amqp import AmqpTransport
from broker_net.topology import Topology
from node_agent.cli_dataset import dataset_app
from node_agent.datasets import DatasetRegistry
from researcher.jobs.prediction import PredictionJob
from researcher.orchestration.fedjob import JobResult
from researcher.orchestration.lifecycle import State
from researcher.orchestration.model_specs import ModelRef
from researcher.orchestration.store.job_store import JobStore
from researcher.orchestration.trained_models import load_model
from researcher.requests.router import Requests
from simulation.federation import operator
from tests.researcher.orchestration.combined_specs import combined_yaml, earlier_job
from tests.researcher.orchestration.test_combined_specs import check_combined
from tests.researcher.orchestration.test_fedjob_broker import (
    NODES,
    RESEARCHER,
    Federation,
    federation,  # noqa: F401 (the fixture)
)
from tests.support.processes import ROOT

pytestmark = [pytest.mark.rabbitmq, pytest.mark.anyio]


async def researcher_cli(fed: Federation, *args: str) -> tuple[int, str, str]:
    """``researcher ARGS``, the installed command: its exit code, standard output and error."""
    done = await anyio.run_process(
        [str(Path(sys.executable).parent / "researcher"), *args],
        env=fed.env(), cwd=ROOT, check=False,
    )  # fmt: skip
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def test_evaluation_warm_start_prediction_over_rabbitmq(
    federation: Federation,  # noqa: F811
    tmp_path: Path,
) -> None:
    async with (
        AmqpTransport(federation.amqp_url, connection_name="researcher:evaluation") as transport,
        Requests(transport, RESEARCHER, topology=Topology(federation.namespace),
                 security=federation.security()) as requests,
    ):  # fmt: skip
        await requests.wait_for_nodes(NODES, timeout=20)
        with JobStore(federation.researcher_dir) as store:
            earlier = await earlier_job("earlier", min_nodes=3).run(
                requests, store=store, approver=operator(federation.nodes_dir), discovery=0
            )
            assert earlier.state is State.SUCCESS, earlier.reason
            assert [e["round"] for e in earlier.outputs["train"]["evaluations"]] == [1, 2]
            best = load_model(store, ModelRef(job=earlier.job_id, task="train", model="best"))
        with JobStore(federation.researcher_dir) as store:
            datasets = dict(store.job(earlier.job_id).datasets or {})
        # The Python API: the best model, encrypted for each node, predicts on its dataset.
        result = await PredictionJob(
            requests, experiment_id="python-predict", params=best.params, datasets=datasets,
            source=best.plan.source, plan_class=best.plan.class_name, job_id=earlier.job_id,
            model="train/best", round=best.round, encrypt_params=True,
        ).execute()  # fmt: skip
    assert not result.failed and sorted(result.replies) == NODES
    for node, reply in result.replies.items():
        with DatasetRegistry(federation.nodes_dir / node) as registry:
            made = registry.get(reply.prediction_dataset_id).provenance or {}
        assert made["request_id"] == result.request_id and made["round"] == best.round
        assert sum(reply.summary["class_counts"].values()) == reply.n_rows > 0

    # The combined YAML spec, submitted with the CLI.
    spec = tmp_path / "combined.yaml"
    spec.write_text(combined_yaml(earlier.job_id, min_nodes=3))
    code, out, err = await researcher_cli(federation, "job", "submit", str(spec), "--json")
    assert code == 0, err
    job_id = str(json.loads(out)["job_id"])
    with JobStore(federation.researcher_dir) as store:
        combined = JobResult.from_store(store, job_id)
        await check_combined(combined, earlier, store, federation.nodes_dir, NODES)

    code, out, err = await researcher_cli(federation, "output", "data", job_id, "--json")
    assert code == 0, err
    predict = json.loads(out)["tasks"]["predict"]["outputs"]
    assert sorted(predict["summaries"]) == NODES and predict["model"]["job"] == job_id
    code, out, err = await researcher_cli(federation, "output", "data", job_id, "--task", "predict")
    assert code == 0 and "class_counts" in out and "n_rows" in out, err
    code, out, err = await researcher_cli(
        federation, "output", "metrics", job_id, "--task", "train", "--json"
    )
    shown = json.loads(out)["tasks"]["train"]
    assert shown["best"]["round"] in (1, 2, 3)
    assert all(r["evaluation"]["metrics"]["accuracy"] > 0 for r in shown["rounds"])

    # What the node's operator sees.
    node = NODES[0]
    listed = CliRunner().invoke(
        dataset_app, ["list", "--json", "--data-dir", str(federation.nodes_dir / node)]
    )
    rows = {row["dataset_id"]: row for row in json.loads(listed.output)}
    made = rows[predict["datasets"][node]]["provenance"]
    assert made["job_id"] == job_id and made["model"].startswith("train/best-")
    assert made["plan_id"] and made["created_at"]


async def test_the_cli_refuses_unknown_jobs_models_and_datasets_in_one_line(
    federation: Federation,  # noqa: F811
    tmp_path: Path,
) -> None:
    base = yaml.safe_load(combined_yaml("job_earlier", min_nodes=3))

    def spec_with(name: str, change) -> Path:  # type: ignore[no-untyped-def]
        data = json.loads(json.dumps(base))
        change(data["tasks"])
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def warm(model: object, job: str = "job_earlier"):  # type: ignore[no-untyped-def]
        return lambda tasks: tasks[4].update(initial_model={"job": job, "model": model})

    cases = [
        (spec_with("unknown-job", warm("best")), "no job has id 'job_earlier'"),
        (spec_with("unknown-model", warm("worst")), "invalid job spec"),
    ]
    for path, message in cases:
        code, out, err = await researcher_cli(federation, "job", "submit", str(path))
        assert code == 2, (out, err)
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert "Traceback" not in err + out

    # A prediction on a dataset a node does not have: the job fails, and says where.
    def predict_on_a_missing_dataset(tasks: list[dict[str, object]]) -> None:
        train = tasks[4]
        for setting in ("strategy", "sampling", "secagg", "evaluation", "initial_model"):
            del train[setting]
        train["rounds"] = 1
        tasks[5].update(model={"task": "train", "model": "final"},
                        datasets={NODES[0]: "dataset_missing"})  # fmt: skip

    missing = spec_with("missing-dataset", predict_on_a_missing_dataset)
    await _approved_first(federation, tmp_path)
    code, out, err = await researcher_cli(federation, "job", "submit", str(missing))
    assert code == 1, (out, err)
    assert "DATASET_NOT_FOUND" in err and "dataset_missing" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err + out


async def _approved_first(fed: Federation, tmp_path: Path) -> None:
    """Approve the demo plan on every node, as their operators would."""
    async with (
        AmqpTransport(fed.amqp_url, connection_name="researcher:approve") as transport,
        Requests(transport, RESEARCHER, topology=Topology(fed.namespace),
                 security=fed.security()) as requests,
    ):  # fmt: skip
        await requests.wait_for_nodes(NODES, timeout=20)
        job = earlier_job("approve-only", min_nodes=3)
        for name in ("stats", "scale", "train"):
            del job.tasks[name]
        with JobStore(tmp_path / "approvals") as store:
            result = await job.run(
                requests, store=store, approver=operator(fed.nodes_dir), discovery=0
            )
        assert result.state is State.SUCCESS, result.reason
