"""Encrypted payloads: only the intended pair can use them, and only in their own context."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker_net.codec import encode
from broker_net.codes import ErrorCode
from broker_net.crypto.encryption import (
    DecryptionError,
    EncryptionContext,
    decrypt_arrays,
    decrypt_from,
    encrypt_arrays,
    encrypt_for,
)
from broker_net.crypto.identities import Identity
from broker_net.errors import DecodeError

NODE = Identity.generate("hospital-a", "node")
RESEARCHER = Identity.generate("lab", "researcher")
EAVESDROPPER = Identity.generate("hospital-b", "node")
CONTEXT = EncryptionContext(
    experiment_id="exp-1", round=3, node_id="hospital-a", request_id="req-1", purpose="aux_var"
)


def _aux_var() -> dict[str, object]:
    rng = np.random.default_rng(7)
    return {
        "scaffold": {"delta": rng.normal(size=(4, 5)), "bias": rng.normal(size=5)},
        "counts": np.arange(6, dtype=np.int32),
    }


@given(st.binary(max_size=4096))
def test_round_trip(plaintext: bytes) -> None:
    ciphertext = encrypt_for(RESEARCHER.public(), NODE, plaintext, context=CONTEXT)

    assert decrypt_from(NODE.public(), RESEARCHER, ciphertext, context=CONTEXT) == plaintext


def test_every_ciphertext_is_fresh() -> None:
    first = encrypt_for(RESEARCHER.public(), NODE, b"same", context=CONTEXT)
    second = encrypt_for(RESEARCHER.public(), NODE, b"same", context=CONTEXT)

    assert first != second
    assert b"same" not in first


@pytest.mark.parametrize(
    "change",
    [
        {"round": 4},
        {"node_id": "hospital-b"},
        {"request_id": "req-2"},
        {"experiment_id": "exp-2"},
        {"purpose": "params"},
    ],
    ids=lambda change: next(iter(change)),
)
def test_ciphertext_replayed_into_another_context_fails(change: dict[str, object]) -> None:
    ciphertext = encrypt_for(RESEARCHER.public(), NODE, b"aux", context=CONTEXT)
    other = dataclasses.replace(CONTEXT, **change)  # type: ignore[arg-type]

    with pytest.raises(DecryptionError) as caught:
        decrypt_from(NODE.public(), RESEARCHER, ciphertext, context=other)
    assert caught.value.code is ErrorCode.DECRYPTION_FAILED


def test_another_recipient_cannot_decrypt() -> None:
    ciphertext = encrypt_for(RESEARCHER.public(), NODE, b"aux", context=CONTEXT)

    with pytest.raises(DecryptionError):
        decrypt_from(NODE.public(), EAVESDROPPER, ciphertext, context=CONTEXT)


def test_a_ciphertext_from_another_sender_is_refused() -> None:
    # hospital-b encrypts to the researcher but the payload is expected from hospital-a.
    ciphertext = encrypt_for(RESEARCHER.public(), EAVESDROPPER, b"aux", context=CONTEXT)

    with pytest.raises(DecryptionError):
        decrypt_from(NODE.public(), RESEARCHER, ciphertext, context=CONTEXT)


@given(st.data())
def test_any_altered_byte_fails(data: st.DataObject) -> None:
    ciphertext = bytearray(encrypt_for(RESEARCHER.public(), NODE, b"aux var", context=CONTEXT))
    index = data.draw(st.integers(0, len(ciphertext) - 1))
    ciphertext[index] ^= data.draw(st.integers(1, 255))

    with pytest.raises(DecryptionError):
        decrypt_from(NODE.public(), RESEARCHER, bytes(ciphertext), context=CONTEXT)


@pytest.mark.parametrize("length", [0, 1, 44, 60])
def test_truncated_ciphertext_fails(length: int) -> None:
    ciphertext = encrypt_for(RESEARCHER.public(), NODE, b"", context=CONTEXT)

    with pytest.raises(DecryptionError):
        decrypt_from(NODE.public(), RESEARCHER, ciphertext[:length], context=CONTEXT)


def test_arrays_round_trip() -> None:
    aux_var = _aux_var()
    ciphertext = encrypt_arrays(RESEARCHER.public(), NODE, aux_var, context=CONTEXT)

    decrypted = decrypt_arrays(NODE.public(), RESEARCHER, ciphertext, context=CONTEXT)

    assert decrypted.keys() == aux_var.keys()
    np.testing.assert_array_equal(decrypted["counts"], aux_var["counts"])
    assert decrypted["counts"].dtype == np.int32
    for name in ("delta", "bias"):
        np.testing.assert_array_equal(decrypted["scaffold"][name], aux_var["scaffold"][name])  # type: ignore[index]


@pytest.mark.parametrize(
    "change", [{"round": 4}, {"node_id": "hospital-b"}, {"request_id": "req-2"}], ids=str
)
def test_encrypted_aux_var_replayed_into_another_round_node_or_request_fails(
    change: dict[str, object],
) -> None:
    ciphertext = encrypt_arrays(RESEARCHER.public(), NODE, _aux_var(), context=CONTEXT)
    other = dataclasses.replace(CONTEXT, **change)  # type: ignore[arg-type]

    with pytest.raises(DecryptionError):
        decrypt_arrays(NODE.public(), RESEARCHER, ciphertext, context=other)


def test_large_parameter_set_round_trip() -> None:
    params = {"weights": np.random.default_rng(0).normal(size=1_000_000)}
    ciphertext = encrypt_arrays(NODE.public(), RESEARCHER, params, context=CONTEXT)

    decrypted = decrypt_arrays(RESEARCHER.public(), NODE, ciphertext, context=CONTEXT)

    np.testing.assert_array_equal(decrypted["weights"], params["weights"])


def test_authentic_payload_that_is_not_a_mapping_is_a_decode_error() -> None:
    ciphertext = encrypt_for(RESEARCHER.public(), NODE, encode([1, 2, 3]), context=CONTEXT)

    with pytest.raises(DecodeError):
        decrypt_arrays(NODE.public(), RESEARCHER, ciphertext, context=CONTEXT)
