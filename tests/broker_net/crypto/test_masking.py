"""The arithmetic under secure aggregation: Shamir shares, fixed point, mask streams."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from broker_net.crypto.masking import (
    PRIME,
    MaskStreams,
    decode_fixed_point,
    encode_fixed_point,
    pair_mask_key,
    round_key,
    seed_commitment,
    self_mask_key,
    shamir_combine,
    shamir_split,
)


@st.composite
def _sharings(draw: st.DrawFn) -> tuple[int, list[int], int]:
    count = draw(st.integers(1, 7))
    xs = draw(st.lists(st.integers(1, 1000), min_size=count, max_size=count, unique=True))
    return draw(st.integers(0, PRIME - 1)), xs, draw(st.integers(1, count))


@given(_sharings())
def test_any_threshold_shares_rebuild_the_secret(sharing: tuple[int, list[int], int]) -> None:
    secret, xs, threshold = sharing
    shares = dict(zip(xs, shamir_split(secret, xs, threshold), strict=True))

    for subset in itertools.combinations(xs, threshold):
        assert shamir_combine({x: shares[x] for x in subset}) == secret


@given(_sharings().filter(lambda sharing: sharing[2] >= 2))
def test_fewer_shares_do_not_give_the_secret(sharing: tuple[int, list[int], int]) -> None:
    secret, xs, threshold = sharing
    shares = dict(zip(xs, shamir_split(secret, xs, threshold), strict=True))

    # Wrong with probability 1 - 1/PRIME: the missing share could be any field element.
    assert shamir_combine({x: shares[x] for x in xs[: threshold - 1]}) != secret


@pytest.mark.parametrize(("secret", "threshold"), [(PRIME, 2), (-1, 2), (5, 0), (5, 4)])
def test_split_refuses_bad_arguments(secret: int, threshold: int) -> None:
    with pytest.raises(ValueError):
        shamir_split(secret, [1, 2, 3], threshold)


_VECTORS = hnp.arrays(
    np.float64,
    st.integers(1, 50),
    elements=st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False),
)


@given(st.lists(st.tuples(_VECTORS, st.integers(0, 1000)), min_size=1, max_size=8))
def test_fixed_point_sums_decode_to_the_weighted_sum(
    parts: list[tuple[np.ndarray, int]],
) -> None:
    size = min(vector.size for vector, _ in parts)
    total = np.zeros(size + 1, np.uint64)
    for vector, weight in parts:
        encoded = encode_fixed_point(vector[:size], weight, clipping_range=1e3, scale=2.0**20)
        np.add(total, np.concatenate([encoded[:size], encoded[-1:]]), out=total)

    weighted_sum, total_weight = decode_fixed_point(total, scale=2.0**20)

    assert total_weight == sum(weight for _, weight in parts)
    expected = sum(weight * vector[:size] for vector, weight in parts)
    np.testing.assert_allclose(weighted_sum, expected, rtol=0, atol=len(parts) * 2.0**-20)


def test_fixed_point_clips_to_the_range() -> None:
    encoded = encode_fixed_point(np.array([-5.0, 0.5, 5.0]), 2, clipping_range=1.0, scale=2.0**10)

    weighted_sum, weight = decode_fixed_point(encoded, scale=2.0**10)

    np.testing.assert_array_equal(weighted_sum, [-2.0, 1.0, 2.0])
    assert weight == 2


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_fixed_point_refuses_non_finite_values(bad: float) -> None:
    with pytest.raises(ValueError, match="NaN or infinite"):
        encode_fixed_point(np.array([1.0, bad]), 1, clipping_range=1.0, scale=2.0**10)


def test_mask_streams_are_deterministic_per_key_and_look_uniform() -> None:
    streams = MaskStreams(100_000)
    first = streams(b"k" * 32).copy()
    again = streams(b"k" * 32).copy()
    other = streams(b"j" * 32).copy()

    np.testing.assert_array_equal(first, again)
    assert np.mean(first == other) < 1e-3
    top_bits = first >> np.uint64(63)
    assert abs(top_bits.mean() - 0.5) < 0.01


def test_pair_mask_key_is_the_same_from_either_side() -> None:
    a, b = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    a_public = a.public_key().public_bytes_raw()
    b_public = b.public_key().public_bytes_raw()

    from_a = pair_mask_key("sa", 0, "node-a", a, "node-b", b_public)
    from_b = pair_mask_key("sa", 0, "node-b", b, "node-a", a_public)

    assert from_a == from_b
    assert pair_mask_key("sa", 1, "node-a", a, "node-b", b_public) != from_a
    with pytest.raises(ValueError):
        pair_mask_key("sa", 0, "node-a", a, "node-b", bytes(32))


@settings(max_examples=20)
@given(st.integers(0, 2**126 - 1))
def test_seed_derivations_depend_on_every_input(seed: int) -> None:
    key = round_key("sa", "node-a", 0, seed).private_bytes_raw()

    assert key == round_key("sa", "node-a", 0, seed).private_bytes_raw()
    assert key != round_key("sa", "node-a", 1, seed).private_bytes_raw()
    assert key != round_key("sa", "node-b", 0, seed).private_bytes_raw()
    assert self_mask_key("sa", "node-a", 0, seed) != self_mask_key("sb", "node-a", 0, seed)
    assert seed_commitment("sa", "node-a", 0, seed) != seed_commitment("sa", "node-a", 0, seed ^ 1)
