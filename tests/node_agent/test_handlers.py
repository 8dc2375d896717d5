"""Request handlers over real stores: replies, error codes, approval, a federated workflow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from broker_net.codec import decode_message, encode
from broker_net.codes import ErrorCode, PreprocStep, PreprocType, TrainingPlanStatus
from broker_net.messages import (
    REPLY_TYPES,
    ApprovalRequest,
    FARequest,
    ListRequest,
    PingRequest,
    PreprocRequest,
    TrainingPlanStatusRequest,
    TrainRequest,
)
from node_agent.context import HandlerError, NodeContext
from node_agent.handlers import HANDLERS, HEAVY_MESSAGE_TYPES
from node_agent.settings import NodeSettings
from researcher.jobs.statistics import combine_statistics
from training_plans.logistic import LogisticRegressionPlan
from training_plans.plan import plan_source

pytestmark = pytest.mark.anyio

PLAN = plan_source(LogisticRegressionPlan)
PLAN_CLASS = "LogisticRegressionPlan"


def open_context(data_dir: Path, **settings) -> NodeContext:
    return NodeContext.open(
        NodeSettings(node_id="hospital-a", node_name="Hospital A", data_dir=data_dir, **settings)
    )


@pytest.fixture
def context(tmp_path: Path):
    context = open_context(tmp_path / "node", plan_timeout=20)
    yield context
    context.close()


def write_dataset(path: Path, rows: slice = slice(None), holes: bool = False) -> Path:
    x, y = load_breast_cancer(return_X_y=True)
    x, y = x[rows].copy(), y[rows]
    if holes:
        x[::7, 0] = np.nan
    names = np.array([f"f{j}" for j in range(x.shape[1])])
    np.savez(path, X=x, y=y, columns=names)
    return path


async def handle(request, context: NodeContext):
    reply: Any = await HANDLERS[request.type](request, context)
    assert reply.request_id == request.request_id
    assert reply.researcher_id == request.researcher_id
    assert (reply.node_id, reply.node_name) == ("hospital-a", "Hospital A")
    assert decode_message(encode(reply)).request_id == reply.request_id
    assert isinstance(reply, REPLY_TYPES[type(request)])
    return reply


async def handle_error(request, context: NodeContext, code: ErrorCode) -> HandlerError:
    with pytest.raises(HandlerError) as caught:
        await HANDLERS[request.type](request, context)
    assert caught.value.code == code, caught.value.message
    encode(caught.value.details)
    return caught.value


def train_request(dataset_id: str, source: str = PLAN, **kwargs) -> TrainRequest:
    fields = {"training_plan_class": PLAN_CLASS, "training_args": {"epochs": 2}, **kwargs}
    return TrainRequest(
        researcher_id="alice",
        experiment_id="exp",
        round=0,
        training_plan=source,
        dataset_id=dataset_id,
        **fields,
    )


def preproc_request(dataset_id, kind, step, state_id=None, **args) -> PreprocRequest:
    return PreprocRequest(
        researcher_id="alice",
        experiment_id="exp",
        dataset_id=dataset_id,
        preproc_type=kind,
        preproc_step=step,
        preproc_id="p1",
        preproc_args=args,
        state_id=state_id,
    )


def test_every_request_type_has_a_handler():
    # A cancel_request is answered by the dispatcher itself (node_agent.cancels).
    assert set(HANDLERS) | {"cancel_request"} == {
        cls.model_fields["type"].default for cls in REPLY_TYPES
    }
    assert set(HEAVY_MESSAGE_TYPES) <= set(HANDLERS)


async def test_ping_and_list(context, tmp_path):
    await handle(PingRequest(researcher_id="alice"), context)
    path = write_dataset(tmp_path / "a.npz", slice(0, 50))
    first = context.datasets.add(path, tags=["cancer", "2024"])
    context.datasets.add(path, tags=["cancer"])

    reply = await handle(ListRequest(researcher_id="alice", tags=["2024"]), context)
    assert [info.dataset_id for info in reply.datasets] == [first.dataset_id]
    assert reply.datasets[0].columns[-1] == "y"
    everything = await handle(ListRequest(researcher_id="alice"), context)
    assert everything.count == 2
    assert context.dataset_ids() == [info.dataset_id for info in everything.datasets]


async def test_federated_analytics_and_its_errors(context, tmp_path):
    dataset_id = context.datasets.add(write_dataset(tmp_path / "a.npz", slice(0, 100))).dataset_id
    request = FARequest(
        researcher_id="alice",
        experiment_id="exp",
        fa_id="fa1",
        dataset_id=dataset_id,
        stats=["mean", "count"],
        dataset_schema=["f0"],
    )
    reply = await handle(request, context)
    assert reply.fa_id == "fa1" and reply.stats == ["mean", "count"]
    x, _ = load_breast_cancer(return_X_y=True)
    assert reply.output["columns"]["f0"]["mean"] == pytest.approx(x[:100, 0].mean())

    unknown = request.model_copy(update={"dataset_id": "dataset_unknown"})
    await handle_error(unknown, context, ErrorCode.DATASET_NOT_FOUND)
    bad = request.model_copy(update={"stats": ["kurtosis"]})
    await handle_error(bad, context, ErrorCode.BAD_ARGUMENTS)


async def test_preprocessing_state_survives_an_agent_restart(tmp_path):
    path = write_dataset(tmp_path / "a.npz", slice(0, 200), holes=True)
    context = open_context(tmp_path / "node", require_approval=False)
    dataset_id = context.datasets.add(path).dataset_id
    await handle_error(train_request(dataset_id), context, ErrorCode.DATA_LOADING_FAILED)

    kind, fit, apply = PreprocType.IMPUTE, PreprocStep.FIT, PreprocStep.APPLY
    fitted = await handle(preproc_request(dataset_id, kind, fit, fill_values={"f0": 14.0}), context)
    applied = await handle(preproc_request(dataset_id, kind, apply, fitted.state_id), context)
    assert applied.state_id == fitted.state_id
    assert applied.preproc_output["filled"] == {"f0": 29}
    context.close()

    restarted = open_context(tmp_path / "node", require_approval=False)
    try:
        reply = await handle(train_request(dataset_id, state_id=fitted.state_id), restarted)
        assert reply.success and reply.state_id == fitted.state_id
        assert reply.sample_size == 160
        await handle_error(
            train_request(dataset_id, state_id="state_unknown"),
            restarted,
            ErrorCode.STATE_NOT_FOUND,
        )
        await handle_error(
            preproc_request(dataset_id, kind, apply, "state_unknown"),
            restarted,
            ErrorCode.STATE_NOT_FOUND,
        )
    finally:
        restarted.close()


async def test_plan_status_and_approval(context):
    status = TrainingPlanStatusRequest(researcher_id="alice", experiment_id="e", training_plan=PLAN)
    reply = await handle(status, context)
    assert reply.status is TrainingPlanStatus.NOT_REGISTERED
    assert reply.approval_obligation is True

    approval = ApprovalRequest(researcher_id="alice", training_plan=PLAN, description="logreg")
    registered = await handle(approval, context)
    assert registered.success is True
    assert registered.status is TrainingPlanStatus.PENDING
    assert registered.training_plan_id == context.plans.show(registered.training_plan_id).plan_id

    context.plans.approve(registered.training_plan_id)
    assert (await handle(status, context)).status is TrainingPlanStatus.APPROVED
    assert (await handle(approval, context)).status is TrainingPlanStatus.APPROVED

    broken = status.model_copy(update={"training_plan": "def (:"})
    await handle_error(broken, context, ErrorCode.PLAN_INVALID)


async def test_an_unapproved_plan_is_never_executed(tmp_path):
    # The witness is a file outside the plan's folder, which a sandboxed plan cannot write:
    # this test of the approval gate turns the sandbox off (test_sandbox.py tests the sandbox).
    context = open_context(tmp_path / "node", plan_timeout=20, plan_sandbox=False)
    try:
        await _unapproved_plan_is_never_executed(context, tmp_path)
    finally:
        context.close()


async def _unapproved_plan_is_never_executed(context, tmp_path):
    marker = tmp_path / "the-plan-ran"
    source = f"open({str(marker)!r}, 'w').close()\n" + PLAN
    dataset_id = context.datasets.add(write_dataset(tmp_path / "a.npz", slice(0, 100))).dataset_id

    error = await handle_error(
        train_request(dataset_id, source), context, ErrorCode.PLAN_NOT_APPROVED
    )
    assert error.details["status"] == TrainingPlanStatus.NOT_REGISTERED.value
    approval = ApprovalRequest(researcher_id="alice", training_plan=source)
    plan_id = (await handle(approval, context)).training_plan_id
    await handle_error(train_request(dataset_id, source), context, ErrorCode.PLAN_NOT_APPROVED)
    context.plans.reject(plan_id)
    await handle_error(train_request(dataset_id, source), context, ErrorCode.PLAN_NOT_APPROVED)
    assert not marker.exists()

    # The same plan, once approved, does run: the marker is a faithful witness.
    context.plans.approve(plan_id)
    reply = await handle(train_request(dataset_id, source), context)
    assert reply.success
    assert marker.exists()


async def test_failing_and_hanging_plans_give_typed_errors(tmp_path):
    context = open_context(tmp_path / "node", require_approval=False, plan_timeout=5.0)
    try:
        dataset_id = context.datasets.add(
            write_dataset(tmp_path / "a.npz", slice(0, 80))
        ).dataset_id
        raising = PLAN + "\nraise RuntimeError('broken at import')\n"
        error = await handle_error(
            train_request(dataset_id, raising), context, ErrorCode.PLAN_FAILED
        )
        assert "broken at import" in error.message and "Traceback" not in error.message
        assert error.details == {"stage": "load", "error_type": "RuntimeError"}

        hanging = PLAN + "\nimport time\ntime.sleep(60)\n"
        await handle_error(train_request(dataset_id, hanging), context, ErrorCode.PLAN_TIMEOUT)

        reply = await handle(train_request(dataset_id), context)
        assert reply.success
    finally:
        context.close()


async def test_training_needs_a_target_a_known_dataset_and_sane_arguments(tmp_path):
    context = open_context(tmp_path / "node", require_approval=False)
    try:
        np.save(tmp_path / "x.npy", np.ones((10, 3)))
        no_target = context.datasets.add(tmp_path / "x.npy").dataset_id
        error = await handle_error(train_request(no_target), context, ErrorCode.DATA_LOADING_FAILED)
        assert "target" in error.message
        await handle_error(train_request("dataset_nope"), context, ErrorCode.DATASET_NOT_FOUND)
        for bad in ({"validation_fraction": 1.5}, {"split_seed": "x"}):
            request = train_request(no_target, training_args=bad)
            await handle_error(request, context, ErrorCode.BAD_ARGUMENTS)
    finally:
        context.close()


@pytest.mark.slow
async def test_federated_workflow_across_three_nodes_reaches_good_accuracy(tmp_path):
    """Analytics, standardisation and FedAvg rounds, each node through its own handlers."""
    x_all, y_all = load_breast_cancer(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y_all))
    nodes: list[tuple[NodeContext, str]] = []
    for i, rows in enumerate(np.array_split(order[100:], 3)):
        path = tmp_path / f"shard{i}.npz"
        np.savez(path, X=x_all[rows], y=y_all[rows])
        context = open_context(tmp_path / f"node{i}")
        nodes.append((context, context.datasets.add(path).dataset_id))
    try:
        columns = [f"c{j}" for j in range(x_all.shape[1])]
        outputs = []
        for context, dataset_id in nodes:
            fa = FARequest(
                researcher_id="alice",
                experiment_id="exp",
                fa_id="moments",
                dataset_id=dataset_id,
                stats=["mean", "std"],
                dataset_schema=columns,
            )
            outputs.append((await handle(fa, context)).output)
        pooled = combine_statistics(outputs)["columns"]
        mean = {c: pooled[c]["mean"] for c in columns}
        std = {c: pooled[c]["std"] for c in columns}

        states = []
        for context, dataset_id in nodes:
            kind = PreprocType.STANDARDIZE
            fitted = await handle(
                preproc_request(dataset_id, kind, PreprocStep.FIT, mean=mean, std=std), context
            )
            await handle(
                preproc_request(dataset_id, kind, PreprocStep.APPLY, fitted.state_id), context
            )
            states.append(fitted.state_id)
            context.plans.approve(context.plans.register(PLAN).plan_id)

        params: dict[str, np.ndarray] = {}
        args = {"epochs": 2, "batch_size": 16, "learning_rate": 0.1}
        for round_ in range(3):
            replies = [
                await handle(
                    train_request(
                        dataset_id, state_id=state_id, params=params, training_args=args
                    ).model_copy(update={"round": round_}),
                    context,
                )
                for (context, dataset_id), state_id in zip(nodes, states, strict=True)
            ]
            total = sum(reply.sample_size for reply in replies)
            params = {
                name: sum(r.params[name] * r.sample_size for r in replies) / total
                for name in replies[0].params
            }
        assert all(reply.metrics["accuracy"] > 0.9 for reply in replies)

        model = LogisticRegressionPlan()
        model.init_model({"n_features": len(columns)})
        model.set_params(params)
        test = order[:100]
        x_test = (x_all[test] - np.array(list(mean.values()))) / np.array(list(std.values()))
        assert model.evaluate(x_test, y_all[test].astype(float))["accuracy"] >= 0.95
    finally:
        for context, _ in nodes:
            context.close()
