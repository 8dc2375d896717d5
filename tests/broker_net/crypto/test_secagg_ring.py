"""Wider rings: values as several uint64 words, added with carries, exact modulo 2**ring_bits."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker_net.crypto.masking import (
    decode_fixed_point,
    encode_fixed_point,
    ring_add,
    ring_negate,
)
from broker_net.crypto.secagg import SecaggContext, ring_bits_for, ring_bits_needed
from tests.broker_net.crypto.test_secagg import _setup


def _as_int(vector: np.ndarray, ring_bits: int) -> list[int]:
    words = vector.reshape(ring_bits // 64, -1)
    return [
        sum(int(words[w, i]) << (64 * w) for w in range(words.shape[0]))
        for i in range(words.shape[1])
    ]


@settings(max_examples=60, deadline=None)
@given(
    ring=st.sampled_from([128, 192, 256]),
    a=st.lists(st.integers(-(2**120), 2**120), min_size=1, max_size=5),
    data=st.data(),
)
def test_ring_addition_is_exact_modulo_the_ring(
    ring: int, a: list[int], data: st.DataObject
) -> None:
    b = data.draw(st.lists(st.integers(0, 2**ring - 1), min_size=len(a), max_size=len(a)))
    modulus = 2**ring
    words = ring // 64

    def pack(values: list[int]) -> np.ndarray:
        return np.array(
            [[(v % modulus) >> (64 * w) & (2**64 - 1) for v in values] for w in range(words)],
            np.uint64,
        ).reshape(-1)

    total = pack(a)
    ring_add(total, pack(b), ring)
    assert _as_int(total, ring) == [(x + y) % modulus for x, y in zip(a, b, strict=True)]
    ring_add(total, pack(b), ring, subtract=True)
    assert _as_int(total, ring) == [x % modulus for x in a]
    negated = ring_negate(pack(a).reshape(words, -1)).reshape(-1)
    assert _as_int(negated, ring) == [-x % modulus for x in a]


@pytest.mark.parametrize("ring", [192, 256])
def test_fixed_point_round_trip_in_a_wide_ring(ring: int) -> None:
    values = np.array([0.0, -1.5, 3.25e-20, -7.0e-30, 1e12, -1e12, 2.0**-90])
    encoded = encode_fixed_point(values, 3, clipping_range=1e13, scale=2.0**96, ring_bits=ring)
    assert encoded.size == (values.size + 1) * ring // 64
    decoded, weight = decode_fixed_point(encoded, scale=2.0**96, ring_bits=ring)
    assert weight == 3
    np.testing.assert_allclose(decoded, values * 3, rtol=1e-15, atol=2.0**-96)


def test_the_ring_grows_with_range_and_precision() -> None:
    assert ring_bits_for(3, 2**20, 1000.0, 20) == 64  # today's defaults
    assert ring_bits_needed(3, 2**20, 1000.0, 20) == 54
    assert ring_bits_for(3, 1, 2.0**32, 90) == 128
    assert ring_bits_for(3, 1, 2.0**40, 90) == 192
    with pytest.raises(ValueError, match="beyond the 512-bit ring"):
        ring_bits_for(3, 1, 1e100, 300)
    with pytest.raises(ValueError, match=r"needs 104 bits.*more than its 64-bit ring"):
        SecaggContext("s", "e", ("a", "b"), 2, clipping_range=2.0**40, precision_bits=40)


def test_a_64_bit_context_reads_as_before_and_a_wider_one_carries_its_ring() -> None:
    context = SecaggContext("s", "e", ("a", "b"), 2)
    assert "ring_bits" not in context.to_dict()
    wide = SecaggContext("s", "e", ("a", "b"), 2, precision_bits=100, ring_bits=192)
    assert wide.to_dict()["ring_bits"] == 192
    assert SecaggContext.from_dict(wide.to_dict()) == wide
    assert (
        wide.digest()
        != SecaggContext("s", "e", ("a", "b"), 2, precision_bits=100, ring_bits=256).digest()
    )


@pytest.mark.parametrize("dropped", [[], ["node-01"]])
def test_secure_sum_in_a_192_bit_ring_is_exact_to_the_last_bit(dropped: list[str]) -> None:
    federation = _setup(4, 3, clipping_range=1e9, precision_bits=100, max_weight=1, ring_bits=192)
    rng = np.random.default_rng(7)
    vectors = {node: rng.normal(0, 10.0 ** rng.integers(-12, 9, 6), 6) for node in federation.nodes}
    result = federation.run_round(0, vectors, dict.fromkeys(vectors, 1), dropped)
    kept = [vectors[node] for node in sorted(vectors) if node not in dropped]
    # Every value here is a multiple of 2**-100, so the fixed-point sum is the exact sum,
    # rounded once to a float: the same as math.fsum.
    import math

    expected = [math.fsum(v[i] for v in kept) for i in range(6)]
    assert result.weighted_sum.tolist() == expected
    assert result.total_weight == len(kept)
