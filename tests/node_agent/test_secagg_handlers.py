"""Secure aggregation and encrypted payloads in the node's handlers, every message through the
codec, with the researcher's side played by the broker_net building blocks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from broker_net.codec import decode_message, encode
from broker_net.codes import ErrorCode
from broker_net.crypto.authentication import Security
from broker_net.crypto.encryption import DecryptionError
from broker_net.crypto.identities import Identity, TrustStore
from broker_net.crypto.masking import decode_fixed_point
from broker_net.crypto.secagg import RevealedShares, SecaggContext, SecaggKeys
from broker_net.crypto.secagg_aggregator import SecaggAggregator
from broker_net.messages import (
    FARequest,
    SecaggReply,
    SecaggRequest,
    SecaggStep,
    TrainReply,
    TrainRequest,
)
from node_agent.context import HandlerError, NodeContext
from node_agent.handlers import HANDLERS
from node_agent.settings import NodeSettings
from researcher.jobs.aggregation import fedavg
from researcher.jobs.masked import masked_update, unflatten
from researcher.jobs.payloads import open_reply, seal_request
from training_plans.logistic import LogisticRegressionPlan
from training_plans.plan import plan_source

pytestmark = pytest.mark.anyio

NODES = ("node-a", "node-b", "node-c")
RESEARCHER = Identity.generate("alice", "researcher")
IDENTITIES = {node: Identity.generate(node, "node") for node in NODES}
ALICE = Security(RESEARCHER, TrustStore(tuple(i.public() for i in IDENTITIES.values())))

AUX_PLAN = """
import numpy as np
from training_plans import LogisticRegressionPlan


class AuxPlan(LogisticRegressionPlan):
    def set_aux_var(self, aux_var):
        self.correction = np.asarray(aux_var["correction"])

    def get_aux_var(self):
        return {"state": getattr(self, "correction", np.zeros(1)) * 2.0}
"""


def _wire(message: Any) -> Any:
    return decode_message(encode(message))


@pytest.fixture
def contexts(tmp_path: Path) -> Iterator[dict[str, NodeContext]]:
    x, y = load_breast_cancer(return_X_y=True)
    opened = {}
    for index, node in enumerate(NODES):
        folder = tmp_path / node
        settings = NodeSettings(node_id=node, data_dir=folder, require_approval=False)
        security = Security(IDENTITIES[node], TrustStore((RESEARCHER.public(),)))
        context = NodeContext.open(settings, security=security)
        rows = slice(150 * index, 150 * index + 120 + 10 * index)
        path = folder / "shard.npz"
        np.savez(path, X=x[rows, :4], y=y[rows], columns=np.array(["a", "b", "c", "d"]))
        context.datasets.add(path, name="shard")
        opened[node] = context
    yield opened
    for context in opened.values():
        context.close()


def _dataset(context: NodeContext) -> str:
    return context.datasets.list()[0].dataset_id


async def _answer(request: Any, context: NodeContext) -> Any:
    reply = await HANDLERS[request.type](_wire(request), context)
    return _wire(reply)


async def _refused(request: Any, context: NodeContext, code: ErrorCode) -> str:
    with pytest.raises(HandlerError) as caught:
        await HANDLERS[request.type](_wire(request), context)
    assert caught.value.code is code, caught.value.message
    return caught.value.message


def _step(step: SecaggStep, researcher: str = "alice", **fields: Any) -> SecaggRequest:
    return SecaggRequest(
        researcher_id=researcher, secagg_id="secagg-1", experiment_id="exp", step=step, **fields
    )


async def _setup(
    contexts: dict[str, NodeContext], rounds: int = 2, **options: Any
) -> SecaggAggregator:
    secagg = SecaggContext(
        "secagg-1", "exp", tuple(contexts), threshold=2, rounds=rounds, **options
    )
    aggregator = SecaggAggregator(secagg, trust=ALICE.trust)
    for context in contexts.values():
        reply = await _answer(_step("keys", context=secagg.to_dict()), context)
        aggregator.add_public_keys(SecaggKeys.from_dict(reply.public_keys))
    relayed = [keys.to_dict() for keys in aggregator.public_keys()]
    for node, context in contexts.items():
        reply = await _answer(_step("shares", public_keys=relayed), context)
        assert set(reply.shares) == set(contexts) - {node}
        aggregator.add_shares(node, reply.shares)
    for node, context in contexts.items():
        reply = await _answer(_step("deliver", shares=aggregator.shares_for(node)), context)
        assert isinstance(reply, SecaggReply) and reply.step == "deliver"
    return aggregator


def _train(context: NodeContext, round_: int, **fields: Any) -> TrainRequest:
    defaults: dict[str, Any] = {
        "params": {"coef": np.full(4, 0.01), "intercept": np.zeros(1)},
        "training_plan": plan_source(LogisticRegressionPlan),
        "training_plan_class": "LogisticRegressionPlan",
        "training_args": {"epochs": 1, "learning_rate": 0.001},
    }
    return TrainRequest(
        researcher_id="alice",
        experiment_id="exp",
        round=round_,
        dataset_id=_dataset(context),
        **(defaults | fields),
    )


async def _secure_round(
    aggregator: SecaggAggregator, contexts: dict[str, NodeContext], round_: int
) -> tuple[dict[str, np.ndarray], dict[str, TrainReply]]:
    replies = {
        node: await _answer(
            _train(context, round_, secagg_arguments={"secagg_id": "secagg-1", "round": round_}),
            context,
        )
        for node, context in contexts.items()
    }
    masked = {}
    for node, reply in replies.items():
        found = masked_update(reply)
        assert found is not None, f"{node} sent plain parameters"
        masked[node], shapes = found
    survivors = sorted(masked)
    revealed = []
    for node in survivors:
        answer = await _answer(_step("reveal", round=round_, survivors=survivors), contexts[node])
        revealed.append(RevealedShares.from_dict(answer.revealed))
    result = aggregator.aggregate(round_, masked, revealed)
    assert result.total_weight == sum(reply.sample_size for reply in replies.values())
    return unflatten(result.mean, shapes), replies


async def _plain_fedavg(contexts: dict[str, NodeContext], nodes: list[str]) -> dict[str, Any]:
    replies = [await _answer(_train(contexts[node], 0), contexts[node]) for node in nodes]
    return fedavg([reply.params for reply in replies], [reply.sample_size for reply in replies])


def _assert_close(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    """Equal shapes, and the whole parameter vectors within relative 1e-6."""
    assert {k: v.shape for k, v in actual.items()} == {k: v.shape for k, v in expected.items()}
    flat = np.concatenate([actual[name].ravel() for name in sorted(expected)])
    reference = np.concatenate([expected[name].ravel() for name in sorted(expected)])
    assert np.linalg.norm(flat - reference) <= 1e-6 * np.linalg.norm(reference)


# --- secure aggregation ------------------------------------------------------------------------


async def test_a_secure_round_equals_fedavg_and_sends_only_masked_vectors(
    contexts: dict[str, NodeContext],
) -> None:
    aggregator = await _setup(contexts)

    averaged, replies = await _secure_round(aggregator, contexts, 0)

    _assert_close(averaged, await _plain_fedavg(contexts, list(NODES)))
    for reply in replies.values():
        params = reply.params or {}
        assert reply.encrypted and set(params) == {"masked", "shapes"}
        assert params["masked"].dtype == np.uint64
        as_if_plain, weight = decode_fixed_point(params["masked"], scale=2.0**20)
        assert weight != reply.sample_size and np.abs(as_if_plain).mean() > 1e9


async def test_a_node_dropping_out_after_setup_is_recovered(
    contexts: dict[str, NodeContext],
) -> None:
    aggregator = await _setup(contexts)
    survivors = {node: contexts[node] for node in ("node-a", "node-c")}

    averaged, _ = await _secure_round(aggregator, survivors, 1)

    _assert_close(averaged, await _plain_fedavg(contexts, list(survivors)))
    answer = await _answer(_step("reveal", round=1, survivors=list(survivors)), contexts["node-a"])
    assert set(answer.revealed["key_shares"]) == {"node-b"}
    assert set(answer.revealed["self_shares"]) == set(survivors)


async def test_masked_statistics_hold_only_totals(contexts: dict[str, NodeContext]) -> None:
    # Totals are large: the analytics context trades the weight range for the value range.
    aggregator = await _setup(contexts, rounds=1, clipping_range=1e9, max_weight=1)
    masked, schemas = {}, []
    for node, context in contexts.items():
        request = FARequest(
            researcher_id="alice", experiment_id="exp", fa_id="fa", dataset_id=_dataset(context),
            stats=["count", "sum", "mean", "variance"], dataset_schema=["a"],
            secagg_arguments={"secagg_id": "secagg-1", "round": 0},
        )  # fmt: skip
        reply = await _answer(request, context)
        assert reply.encrypted and reply.output is None
        masked[node] = reply.params_encrypted[0]
        schemas.append(reply.output_schema)
    survivors = sorted(masked)
    revealed = [
        RevealedShares.from_dict(
            (await _answer(_step("reveal", round=0, survivors=survivors), contexts[n])).revealed
        )
        for n in survivors
    ]
    totals = aggregator.aggregate(0, masked, revealed).weighted_sum

    assert schemas[0] == schemas[1] == schemas[2]
    assert schemas[0][1]["quantities"] == ["count", "missing", "sum", "sumsq"]
    columns = [
        context.datasets.load(_dataset(context)).column("a") for context in contexts.values()
    ]
    pooled = np.concatenate(columns)
    expected = [sum(len(c) for c in columns), len(pooled), 0, pooled.sum(), (pooled**2).sum()]
    np.testing.assert_allclose(totals, expected, rtol=1e-9)


async def test_statistics_that_are_not_sums_are_refused(contexts: dict[str, NodeContext]) -> None:
    await _setup(contexts, rounds=1)
    context = contexts["node-a"]
    request = FARequest(
        researcher_id="alice", experiment_id="exp", fa_id="fa", dataset_id=_dataset(context),
        stats=["mean", "max"], secagg_arguments={"secagg_id": "secagg-1", "round": 0},
    )  # fmt: skip

    message = await _refused(request, context, ErrorCode.BAD_ARGUMENTS)
    assert "max" in message and "secure aggregation" in message


async def test_refusals_of_the_secure_aggregation_steps(
    contexts: dict[str, NodeContext], tmp_path: Path
) -> None:
    node = contexts["node-a"]
    secagg = SecaggContext("secagg-1", "exp", NODES, threshold=2)
    arguments = {"secagg_id": "secagg-1", "round": 0}

    await _refused(_train(node, 0, secagg_arguments=arguments), node, ErrorCode.SECAGG_FAILED)
    await _refused(_step("shares", public_keys=[]), node, ErrorCode.SECAGG_FAILED)
    await _answer(_step("keys", context=secagg.to_dict()), node)
    # The context is this researcher's: another one can neither continue nor use it.
    await _refused(_step("shares", "bob", public_keys=[]), node, ErrorCode.SECAGG_FAILED)
    message = await _refused(
        _train(node, 0, secagg_arguments=arguments), node, ErrorCode.SECAGG_FAILED
    )
    assert "unfinished" in message
    other = SecaggContext("secagg-1", "exp", NODES, threshold=3)
    await _refused(_step("keys", context=other.to_dict()), node, ErrorCode.SECAGG_FAILED)
    stranger = SecaggContext("s2", "exp", ("node-x", "node-y"), threshold=2)
    fresh = _step("keys", context=stranger.to_dict()).model_copy(update={"secagg_id": "s2"})
    await _refused(fresh, node, ErrorCode.SECAGG_FAILED)

    forged = SecaggKeys.from_dict(
        (await _answer(_step("keys", context=secagg.to_dict()), contexts["node-b"])).public_keys
    )
    tampered = forged.to_dict() | {"signature": bytes(64)}
    await _refused(_step("shares", public_keys=[tampered]), node, ErrorCode.BAD_SIGNATURE)

    unsecured = NodeContext.open(NodeSettings(node_id="node-a", data_dir=tmp_path / "bare"))
    try:
        message = await _refused(
            _step("keys", context=secagg.to_dict()), unsecured, ErrorCode.SECAGG_FAILED
        )
        assert "without security" in message
    finally:
        unsecured.close()


async def test_a_round_is_masked_once_and_revealed_for_one_set_of_survivors(
    contexts: dict[str, NodeContext],
) -> None:
    await _setup(contexts)
    node = contexts["node-a"]
    arguments = {"secagg_id": "secagg-1", "round": 0}
    await _answer(_train(node, 0, secagg_arguments=arguments), node)

    await _refused(_train(node, 0, secagg_arguments=arguments), node, ErrorCode.SECAGG_FAILED)
    await _answer(_step("reveal", round=0, survivors=["node-a", "node-b"]), node)
    await _refused(_step("reveal", round=0, survivors=list(NODES)), node, ErrorCode.SECAGG_FAILED)
    await _refused(
        _train(node, 0, secagg_arguments={"secagg_id": "secagg-1", "round": 5}),
        node,
        ErrorCode.BAD_ARGUMENTS,
    )


async def test_values_outside_the_clipping_range_are_refused(
    contexts: dict[str, NodeContext],
) -> None:
    await _setup(contexts)
    node = contexts["node-a"]
    request = _train(
        node, 0, params={"coef": np.full(4, 5000.0), "intercept": np.zeros(1)}, training=False,
        secagg_arguments={"secagg_id": "secagg-1", "round": 0},
    )  # fmt: skip

    message = await _refused(request, node, ErrorCode.SECAGG_FAILED)
    assert "clipping range" in message


# --- encrypted payloads ------------------------------------------------------------------------


def _sealed(context: NodeContext, round_: int, request_id: str) -> TrainRequest:
    request = _train(
        context, round_, training_plan=AUX_PLAN, training_plan_class="AuxPlan",
        optim_aux_var={"correction": np.array([0.5, -1.0])},
    )  # fmt: skip
    return seal_request(
        request, context.node_id, ALICE, request_id=request_id, encrypt_aux_var=True,
        encrypt_params=True,
    )  # fmt: skip


async def test_encrypted_aux_var_and_params_round_trip(contexts: dict[str, NodeContext]) -> None:
    node = contexts["node-b"]
    request = _sealed(node, 3, "request-1")
    assert set(request.optim_aux_var or {}) == {"encrypted", "alg"}
    assert set(request.params) == {"encrypted", "alg"}

    reply = await _answer(request, node)

    assert reply.encrypted and set(reply.params) == {"encrypted", "alg"}
    assert set(reply.optim_aux_var) == {"encrypted", "alg"}
    opened = open_reply(reply, ALICE, experiment_id="exp", round=3, request_id="request-1")
    np.testing.assert_array_equal((opened.optim_aux_var or {})["state"], [1.0, -2.0])
    assert set(opened.params or {}) == {"coef", "intercept"} and not opened.encrypted
    with pytest.raises(DecryptionError):
        open_reply(reply, ALICE, experiment_id="exp", round=3, request_id="request-2")


@pytest.mark.parametrize("replayed_into", ["round", "node", "request"])
async def test_an_encrypted_aux_var_replayed_elsewhere_fails_to_decrypt(
    contexts: dict[str, NodeContext], replayed_into: str
) -> None:
    original = _sealed(contexts["node-b"], 3, "request-1")
    context = contexts["node-c" if replayed_into == "node" else "node-b"]
    replay = _train(
        context, 4 if replayed_into == "round" else 3, optim_aux_var=original.optim_aux_var
    )
    if replayed_into != "request":
        replay = replay.model_copy(update={"request_id": "request-1"})

    message = await _refused(replay, context, ErrorCode.DECRYPTION_FAILED)
    assert "optim_aux_var" in message
