"""Secure aggregation, driven as the job layer would: every exchange goes through the codec."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker_net.codec import decode, encode
from broker_net.codes import ErrorCode
from broker_net.crypto.encryption import DecryptionError
from broker_net.crypto.identities import BadSignatureError, Identity, TrustStore, UnknownKeyError
from broker_net.crypto.masking import (
    MaskedVector,
    MaskStreams,
    decode_fixed_point,
    round_key,
    shamir_combine,
)
from broker_net.crypto.secagg import (
    RevealedShares,
    SecaggContext,
    SecaggError,
    SecaggKeys,
    pair_key,
)
from broker_net.crypto.secagg_aggregator import SecaggAggregator, SecaggResult
from broker_net.crypto.secagg_node import SecaggNode


def _wire(value: object) -> dict:  # type: ignore[type-arg]
    """What the other side receives: the value as plain data, encoded and decoded."""
    return decode(encode(value))  # type: ignore[no-any-return]


@dataclass
class Federation:
    context: SecaggContext
    nodes: dict[str, SecaggNode]
    aggregator: SecaggAggregator

    def run_round(
        self,
        round_: int,
        vectors: Mapping[str, np.ndarray],
        weights: Mapping[str, int],
        dropped: Collection[str] = (),
    ) -> SecaggResult:
        masked = {}
        for node_id, node in self.nodes.items():
            if node_id not in dropped:
                vector = node.mask(vectors[node_id], round=round_, weight=weights[node_id])
                masked[node_id] = _wire({"params": vector})["params"]
        revealed = []
        if self.aggregator.needs_reveal(masked):
            for node_id in masked:
                answer = self.nodes[node_id].reveal(round_, masked).to_dict()
                revealed.append(RevealedShares.from_dict(_wire(answer)))
        return self.aggregator.aggregate(round_, masked, revealed)


def _setup(
    count: int,
    threshold: int,
    *,
    rounds: int = 1,
    absent: Collection[str] = (),
    **options: object,
) -> Federation:
    node_ids = [f"node-{i:02d}" for i in range(count)]
    context = SecaggContext("secagg-1", "exp-1", tuple(node_ids), threshold, rounds, **options)  # type: ignore[arg-type]
    sent = SecaggContext.from_dict(_wire(context.to_dict()))
    nodes = {
        node_id: SecaggNode(Identity.generate(node_id, "node"), sent)
        for node_id in node_ids
        if node_id not in absent
    }
    aggregator = SecaggAggregator(context)
    for node in nodes.values():
        aggregator.add_public_keys(SecaggKeys.from_dict(_wire(node.public_keys().to_dict())))
    relayed = [SecaggKeys.from_dict(_wire(keys.to_dict())) for keys in aggregator.public_keys()]
    for node_id, node in nodes.items():
        aggregator.add_shares(node_id, _wire(node.receive_public_keys(relayed)))
    for node_id, node in nodes.items():
        node.receive_shares(_wire(aggregator.shares_for(node_id)))
    return Federation(context, nodes, aggregator)


def _data(
    federation: Federation, size: int, seed: int = 0
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    rng = np.random.default_rng(seed)
    vectors = {node_id: rng.normal(size=size) for node_id in federation.nodes}
    weights = {node_id: int(rng.integers(10, 5000)) for node_id in federation.nodes}
    return vectors, weights


def _plain_mean(
    vectors: Mapping[str, np.ndarray], weights: Mapping[str, int], survivors: Collection[str]
) -> np.ndarray:
    total = sum(weights[node_id] for node_id in survivors)
    return sum(weights[node_id] * vectors[node_id] for node_id in survivors) / total  # type: ignore[return-value]


def _assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    assert np.linalg.norm(actual - expected) <= 1e-6 * np.linalg.norm(expected)
    assert np.abs(actual - expected).max() <= 2.0**-20


# --- correctness -------------------------------------------------------------------------------


def test_secure_mean_equals_plain_mean_for_ten_nodes() -> None:
    federation = _setup(10, 6)
    vectors, weights = _data(federation, 100_000)

    result = federation.run_round(0, vectors, weights)

    assert result.survivors == tuple(sorted(federation.nodes))
    assert result.total_weight == sum(weights.values())
    _assert_close(result.mean, _plain_mean(vectors, weights, federation.nodes))
    _assert_close(result.weighted_sum / result.total_weight, result.mean)


def test_one_node_dropping_after_key_setup() -> None:
    federation = _setup(10, 6)
    vectors, weights = _data(federation, 100_000)

    result = federation.run_round(0, vectors, weights, dropped=["node-04"])

    survivors = [node_id for node_id in federation.nodes if node_id != "node-04"]
    assert result.survivors == tuple(survivors)
    _assert_close(result.mean, _plain_mean(vectors, weights, survivors))


@pytest.mark.parametrize("dropped", [["node-00", "node-04"], ["node-01", "node-02"]])
def test_two_nodes_dropping_with_three_of_five(dropped: list[str]) -> None:
    federation = _setup(5, 3)
    vectors, weights = _data(federation, 100_000, seed=1)

    result = federation.run_round(0, vectors, weights, dropped=dropped)

    survivors = [node_id for node_id in federation.nodes if node_id not in dropped]
    _assert_close(result.mean, _plain_mean(vectors, weights, survivors))


def test_node_absent_from_setup_is_left_out() -> None:
    federation = _setup(5, 3, absent=["node-02"])
    vectors, weights = _data(federation, 1000)

    result = federation.run_round(0, vectors, weights)

    assert "node-02" not in result.survivors
    _assert_close(result.mean, _plain_mean(vectors, weights, federation.nodes))


def test_every_round_of_a_context_has_fresh_masks() -> None:
    federation = _setup(4, 3, rounds=3)
    vectors, weights = _data(federation, 1000)

    results = [
        federation.run_round(0, vectors, weights),
        federation.run_round(1, vectors, weights, dropped=["node-03"]),
        federation.run_round(2, vectors, weights, dropped=["node-00"]),
    ]

    _assert_close(results[0].mean, _plain_mean(vectors, weights, federation.nodes))
    _assert_close(results[1].mean, _plain_mean(vectors, weights, ["node-00", "node-01", "node-02"]))
    _assert_close(results[2].mean, _plain_mean(vectors, weights, ["node-01", "node-02", "node-03"]))


def test_without_self_masks_a_full_round_needs_no_reveal() -> None:
    federation = _setup(4, 3, self_mask=False)
    vectors, weights = _data(federation, 1000)
    node_ids = list(federation.nodes)

    assert not federation.aggregator.needs_reveal(node_ids)
    assert federation.aggregator.needs_reveal(node_ids[:3])
    result = federation.run_round(0, vectors, weights)
    _assert_close(result.mean, _plain_mean(vectors, weights, node_ids))


def test_values_are_clipped_to_the_range() -> None:
    federation = _setup(3, 2, clipping_range=1.0)
    vectors = {node_id: np.array([5.0, -5.0, 0.25]) for node_id in federation.nodes}
    weights = dict.fromkeys(federation.nodes, 1)

    result = federation.run_round(0, vectors, weights)

    np.testing.assert_allclose(result.mean, [1.0, -1.0, 0.25])


def test_zero_total_weight_has_no_mean() -> None:
    federation = _setup(3, 2)
    vectors, _ = _data(federation, 10)

    result = federation.run_round(0, vectors, dict.fromkeys(federation.nodes, 0))

    assert result.total_weight == 0
    with pytest.raises(ZeroDivisionError):
        _ = result.mean


@settings(max_examples=15, deadline=None)
@given(st.data())
def test_any_dropout_pattern_within_the_threshold(data: st.DataObject) -> None:
    count = data.draw(st.integers(3, 6))
    threshold = data.draw(st.integers(2, count))
    federation = _setup(count, threshold)
    node_ids = list(federation.nodes)
    dropped = data.draw(
        st.lists(st.sampled_from(node_ids), unique=True, max_size=count - threshold)
    )
    vectors, weights = _data(federation, data.draw(st.integers(1, 300)), seed=count)

    result = federation.run_round(0, vectors, weights, dropped=dropped)

    survivors = [node_id for node_id in node_ids if node_id not in dropped]
    _assert_close(result.mean, _plain_mean(vectors, weights, survivors))


# --- what the researcher sees ------------------------------------------------------------------


def test_a_single_masked_vector_says_nothing_of_the_plain_one() -> None:
    federation = _setup(10, 6)
    vectors, weights = _data(federation, 100_000)
    node = federation.nodes["node-03"]

    masked = node.mask(vectors["node-03"], round=0, weight=weights["node-03"])

    as_if_plain, weight = decode_fixed_point(masked, scale=federation.context.scale)
    plain = weights["node-03"] * vectors["node-03"]
    assert weight != weights["node-03"]
    assert np.abs(as_if_plain - plain).mean() > 1e9
    assert abs(np.corrcoef(as_if_plain, plain)[0, 1]) < 0.02
    assert np.unique(masked >> np.uint64(56)).size == 256


def test_the_sum_stays_masked_until_the_survivors_reveal() -> None:
    federation = _setup(4, 3)
    vectors, weights = _data(federation, 1000)
    masked = {
        node_id: node.mask(vectors[node_id], round=0, weight=weights[node_id])
        for node_id, node in federation.nodes.items()
    }
    total = np.zeros_like(masked["node-00"])
    for vector in masked.values():
        np.add(total, vector, out=total)

    as_if_plain, _ = decode_fixed_point(total, scale=federation.context.scale)

    expected = sum(weights[i] * vectors[i] for i in federation.nodes)
    assert np.abs(as_if_plain - expected).mean() > 1e9
    with pytest.raises(SecaggError, match="0 shares"):
        federation.aggregator.aggregate(0, masked, [])


def test_reveal_gives_only_survivors_self_shares_and_dropped_key_shares() -> None:
    federation = _setup(5, 3)
    vectors, weights = _data(federation, 100)
    survivors = ["node-00", "node-01", "node-03"]
    for node_id in survivors:
        federation.nodes[node_id].mask(vectors[node_id], round=0, weight=weights[node_id])

    revealed = federation.nodes["node-01"].reveal(0, survivors)

    assert set(revealed.self_shares) == set(survivors)
    assert set(revealed.key_shares) == {"node-02", "node-04"}


def test_a_node_never_reveals_both_seeds_of_one_node_in_a_round() -> None:
    federation = _setup(5, 3)
    vectors, weights = _data(federation, 100)
    for node in federation.nodes.values():
        node.mask(vectors[node.node_id], round=0, weight=weights[node.node_id])
    node = federation.nodes["node-00"]
    first = node.reveal(0, ["node-00", "node-01", "node-02", "node-03"])

    assert node.reveal(0, ["node-03", "node-02", "node-01", "node-00"]) == first
    # node-04 was declared dropped, so its key share is out: its self share must stay in.
    with pytest.raises(SecaggError, match="other survivors") as caught:
        node.reveal(0, list(federation.nodes))
    assert caught.value.code is ErrorCode.SECAGG_FAILED


@pytest.mark.parametrize("self_mask", [True, False])
def test_a_late_vector_of_a_dropped_node(self_mask: bool) -> None:
    federation = _setup(4, 3, self_mask=self_mask)
    context = federation.context
    vectors, weights = _data(federation, 1000)
    survivors = ["node-00", "node-01", "node-02"]
    masked = {
        i: federation.nodes[i].mask(vectors[i], round=0, weight=weights[i]) for i in survivors
    }
    revealed = [federation.nodes[i].reveal(0, survivors) for i in survivors]
    federation.aggregator.aggregate(0, masked, revealed)
    late = federation.nodes["node-03"].mask(vectors["node-03"], round=0, weight=weights["node-03"])

    # The researcher rebuilds node-03's round key and strips every pairwise mask off its vector;
    # node-03 sorts last, so it had subtracted them all.
    seed = shamir_combine({context.position(r.node_id): r.key_shares["node-03"] for r in revealed})
    secret = round_key(context.secagg_id, "node-03", 0, seed)
    streams = MaskStreams(late.size)
    for peer in survivors:
        public = federation.nodes[peer].public_keys().public_keys[0]
        np.add(late, streams(pair_key(context, 0, "node-03", secret, peer, public)), out=late)
    stripped, _ = decode_fixed_point(late, scale=context.scale)

    plain = weights["node-03"] * vectors["node-03"]
    if self_mask:
        assert np.abs(stripped - plain).mean() > 1e9
    else:
        # Without a self mask the vector is exposed: the cost of saving the reveal exchange.
        np.testing.assert_allclose(stripped, plain, atol=2.0**-20)


# --- protocol misuse and forgeries -------------------------------------------------------------


def test_masking_a_round_twice_is_refused() -> None:
    federation = _setup(3, 2, rounds=2)
    node = federation.nodes["node-00"]
    node.mask(np.ones(10), round=0, weight=1)

    with pytest.raises(SecaggError):
        node.mask(np.zeros(10), round=0, weight=1)
    with pytest.raises(ValueError, match="round"):
        node.mask(np.zeros(10), round=2, weight=1)
    with pytest.raises(ValueError, match="weight"):
        node.mask(np.zeros(10), round=1, weight=2**21)


def test_masking_before_setup_is_refused() -> None:
    context = SecaggContext("secagg-1", "exp-1", ("node-00", "node-01"), 2)
    node = SecaggNode(Identity.generate("node-00", "node"), context)

    with pytest.raises(SecaggError, match="setup"):
        node.mask(np.ones(3), round=0)


def test_reveal_below_the_threshold_or_for_unmasked_rounds_is_refused() -> None:
    federation = _setup(4, 3)
    node = federation.nodes["node-00"]

    with pytest.raises(SecaggError, match="below the threshold"):
        node.reveal(0, ["node-01", "node-02"])
    with pytest.raises(SecaggError, match="never masked"):
        node.reveal(0, ["node-00", "node-01", "node-02"])
    with pytest.raises(SecaggError, match="participants"):
        node.reveal(0, ["node-01", "node-02", "node-99"])


def test_aggregate_below_the_threshold_is_refused() -> None:
    federation = _setup(4, 3)
    vectors, _ = _data(federation, 10)
    masked = {
        node_id: federation.nodes[node_id].mask(vectors[node_id], round=0, weight=1)
        for node_id in ["node-00", "node-01"]
    }

    with pytest.raises(SecaggError, match="cannot aggregate"):
        federation.aggregator.aggregate(0, masked, [])


@pytest.mark.parametrize(
    ("field", "owner", "match"),
    [("key_shares", "node-03", "public key"), ("self_shares", "node-01", "commitment")],
)
def test_a_wrong_share_is_detected(field: str, owner: str, match: str) -> None:
    federation = _setup(4, 3)
    vectors, _ = _data(federation, 10)
    survivors = ["node-00", "node-01", "node-02"]
    masked = {i: federation.nodes[i].mask(vectors[i], round=0, weight=1) for i in survivors}
    revealed = [federation.nodes[i].reveal(0, survivors) for i in survivors]
    shares = dict(getattr(revealed[0], field))
    shares[owner] += 1
    revealed[0] = replace(revealed[0], **{field: shares})  # type: ignore[arg-type]

    with pytest.raises(SecaggError, match=f"{owner}.*{match}"):
        federation.aggregator.aggregate(0, masked, revealed)


def test_keys_signed_for_another_context_are_refused() -> None:
    context = SecaggContext("secagg-1", "exp-1", ("node-00", "node-01", "node-02"), 2)
    other = replace(context, threshold=3)
    node = SecaggNode(Identity.generate("node-00", "node"), context)
    stranger = SecaggNode(Identity.generate("node-01", "node"), other)

    with pytest.raises(BadSignatureError):
        node.receive_public_keys([stranger.public_keys()])
    with pytest.raises(BadSignatureError):
        SecaggAggregator(context).add_public_keys(stranger.public_keys())


def test_altered_public_keys_are_refused() -> None:
    context = SecaggContext("secagg-1", "exp-1", ("node-00", "node-01"), 2)
    node = SecaggNode(Identity.generate("node-00", "node"), context)
    keys = SecaggNode(Identity.generate("node-01", "node"), context).public_keys()
    swapped = replace(keys, public_keys=(node.public_keys().public_keys[0],))

    with pytest.raises(BadSignatureError):
        node.receive_public_keys([swapped])
    with pytest.raises(SecaggError, match="wrong number of rounds"):
        node.receive_public_keys([replace(keys, public_keys=())])


def test_pinned_peer_identities_stop_a_stand_in() -> None:
    context = SecaggContext("secagg-1", "exp-1", ("node-00", "node-01"), 2)
    genuine = Identity.generate("node-01", "node")
    stand_in = SecaggNode(Identity.generate("node-01", "node"), context)
    node = SecaggNode(
        Identity.generate("node-00", "node"), context, peer_trust=TrustStore((genuine.public(),))
    )

    with pytest.raises(UnknownKeyError):
        node.receive_public_keys([stand_in.public_keys()])
    assert node.receive_public_keys([SecaggNode(genuine, context).public_keys()])


def test_trusting_aggregator_refuses_unknown_nodes() -> None:
    context = SecaggContext("secagg-1", "exp-1", ("node-00", "node-01"), 2)
    aggregator = SecaggAggregator(context, trust=TrustStore())

    with pytest.raises(UnknownKeyError):
        aggregator.add_public_keys(
            SecaggNode(Identity.generate("node-00", "node"), context).public_keys()
        )


def test_shares_altered_or_meant_for_another_node_fail_to_decrypt() -> None:
    context = SecaggContext("secagg-1", "exp-1", ("node-00", "node-01", "node-02"), 2)
    nodes = [SecaggNode(Identity.generate(i, "node"), context) for i in context.node_ids]
    keys = [node.public_keys() for node in nodes]
    shares = {node.node_id: node.receive_public_keys(keys) for node in nodes}
    altered = bytearray(shares["node-01"]["node-00"])
    altered[-1] ^= 1

    with pytest.raises(DecryptionError):
        nodes[0].receive_shares({"node-01": bytes(altered)})
    with pytest.raises(DecryptionError):
        nodes[0].receive_shares({"node-01": shares["node-01"]["node-02"]})


def test_setup_steps_out_of_order_are_refused() -> None:
    context = SecaggContext("secagg-1", "exp-1", ("node-00", "node-01", "node-02"), 2)
    nodes = [SecaggNode(Identity.generate(i, "node"), context) for i in context.node_ids]
    aggregator = SecaggAggregator(context)
    aggregator.add_public_keys(nodes[0].public_keys())

    with pytest.raises(SecaggError, match="below the threshold"):
        aggregator.public_keys()
    with pytest.raises(SecaggError, match="out of order"):
        aggregator.add_shares("node-00", {})
    aggregator.add_public_keys(nodes[1].public_keys())
    keys = aggregator.public_keys()
    with pytest.raises(SecaggError, match="too late"):
        aggregator.add_public_keys(nodes[2].public_keys())
    shares = nodes[0].receive_public_keys(keys)
    with pytest.raises(SecaggError, match="already received"):
        nodes[0].receive_public_keys(keys)
    with pytest.raises(SecaggError, match="one share for each"):
        aggregator.add_shares("node-00", {})
    aggregator.add_shares("node-00", shares)
    with pytest.raises(SecaggError, match="not among enough"):
        aggregator.shares_for("node-00")


@pytest.mark.parametrize(
    "change",
    [
        {"threshold": 1},
        {"threshold": 4},
        {"node_ids": ("node-00",)},
        {"node_ids": ("node-00", "node-00", "node-01")},
        {"rounds": 0},
        {"clipping_range": 0.0},
        {"precision_bits": 40},
    ],
    ids=str,
)
def test_invalid_contexts_are_refused(change: dict[str, object]) -> None:
    arguments: dict[str, object] = {
        "secagg_id": "secagg-1",
        "experiment_id": "exp-1",
        "node_ids": ("node-00", "node-01", "node-02"),
        "threshold": 2,
    }
    with pytest.raises(ValueError):
        SecaggContext(**(arguments | change))  # type: ignore[arg-type]


def test_context_round_trip_and_digest() -> None:
    context = SecaggContext("secagg-1", "exp-1", ("node-b", "node-a"), 2, clipping_range=10)

    assert context.node_ids == ("node-a", "node-b")
    assert SecaggContext.from_dict(_wire(context.to_dict())) == context
    assert SecaggContext.from_dict(_wire(context.to_dict())).digest() == context.digest()
    assert replace(context, rounds=2).digest() != context.digest()
    with pytest.raises(ValueError, match="bad secure aggregation context"):
        SecaggContext.from_dict({"secagg_id": "s"})


def test_malformed_wire_data_is_refused() -> None:
    with pytest.raises(SecaggError):
        SecaggKeys.from_dict({"node_id": "node-00"})
    with pytest.raises(SecaggError):
        RevealedShares.from_dict({"node_id": "node-00", "round": 0, "self_shares": []})


def test_masked_vectors_of_other_lengths_are_refused() -> None:
    federation = _setup(3, 2)
    masked: dict[str, MaskedVector] = {
        node_id: node.mask(np.ones(3 + i), round=0)
        for i, (node_id, node) in enumerate(federation.nodes.items())
    }

    with pytest.raises(SecaggError, match="one length"):
        federation.aggregator.aggregate(0, masked, [])
