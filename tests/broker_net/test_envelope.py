"""The envelope framing: ``[header map, auth, body bin]`` read without decoding the body."""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from dataclasses import asdict, replace
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker_net.codec import decode_message, encode, encode_parts
from broker_net.codes import ErrorCode
from broker_net.envelope import (
    ENVELOPE_VERSION,
    EnvelopeHeader,
    seal,
    seal_parts,
    unseal,
)
from broker_net.errors import EnvelopeError, MessageTooLargeError
from broker_net.frames import amqp_headers
from broker_net.messages import ErrorMessage, Heartbeat, PingRequest, TrainReply, TrainRequest


class _FixedSigner:
    algorithm = "test-hmac"
    key_id = "key-1"

    def __init__(self) -> None:
        self.signed: list[bytes] = []

    def sign(self, header_bytes: bytes) -> bytes:
        self.signed.append(header_bytes)
        return hashlib.sha256(b"secret" + header_bytes).digest()


def _train_request() -> TrainRequest:
    return TrainRequest(
        request_id="request_1",
        researcher_id="alice",
        experiment_id="exp-1",
        round=4,
        training_plan="class Plan: ...",
        training_plan_class="Plan",
        dataset_id="ds",
        params={"w": np.arange(6, dtype=np.float32).reshape(2, 3)},
    )


def _header(message: Any = None, **changes: Any) -> EnvelopeHeader:
    message = message or _train_request()
    header = EnvelopeHeader.for_message(
        message, sender_id="alice", sender_role="researcher", recipient="hospital-a"
    )
    return replace(header, **changes)


def _frame(header: Any, auth: Any = None, body: Any = b"\x80") -> bytes:
    data: bytes = msgpack.packb([header, auth, body], use_bin_type=True)
    return data


_DROP = object()


def _fields(**changes: Any) -> dict[str, Any]:
    fields = asdict(_header())
    fields.update(changes)
    return {key: value for key, value in fields.items() if value is not _DROP}


# --- round trip --------------------------------------------------------------------------------


def test_seal_unseal_round_trip() -> None:
    message = _train_request()
    header = _header(message)
    envelope = unseal(seal(header, message))
    assert envelope.header == header
    assert envelope.auth is None
    decoded = decode_message(envelope.body)
    assert isinstance(decoded, TrainRequest)
    assert np.array_equal(decoded.params["w"], message.params["w"])


def test_header_copies_the_message_ids() -> None:
    header = _header()
    assert header.message_type == "train_request"
    assert header.request_id == "request_1"
    assert header.experiment_id == "exp-1"
    assert header.message_id.startswith("msg_")
    assert header.version == ENVELOPE_VERSION
    assert len(header.nonce) == 16


@given(
    sender=st.text(min_size=1, max_size=30),
    recipient=st.text(min_size=1, max_size=30),
    body=st.binary(max_size=300),
    transfer=st.none() | st.dictionaries(st.text(max_size=5), st.integers(0, 100), max_size=3),
)
def test_any_header_and_body_round_trip(
    sender: str, recipient: str, body: bytes, transfer: dict[str, int] | None
) -> None:
    header = replace(_header(), sender_id=sender, recipient=recipient, transfer=transfer)
    envelope = unseal(b"".join(seal_parts(header, [body])))
    assert envelope.header == header
    assert bytes(envelope.body) == body


def test_seal_parts_joins_to_seal() -> None:
    message = _train_request()
    header = _header(message)
    assert b"".join(seal_parts(header, encode_parts(message))) == seal(header, message)


def test_wire_bytes_are_a_plain_msgpack_array_of_three() -> None:
    message = PingRequest(researcher_id="alice")
    header = _header(message)
    data = seal(header, message)
    assert data[0] == 0x93  # fixarray of 3
    fields, auth, body = msgpack.unpackb(data)
    assert fields == asdict(header)
    assert auth is None
    assert body == encode(message)


def test_body_is_a_view_of_the_wire_bytes() -> None:
    data = seal(_header(), _train_request())
    envelope = unseal(data)
    assert isinstance(envelope.body, memoryview)
    assert envelope.body.obj is data
    assert bytes(envelope.body) == data[-envelope.body.nbytes :]


def test_authenticated_envelope_carries_signature_and_digest() -> None:
    signer = _FixedSigner()
    message = _train_request()
    data = seal(_header(message), message, authenticator=signer)
    envelope = unseal(data)
    assert envelope.header.auth_alg == "test-hmac"
    assert envelope.header.key_id == "key-1"
    assert envelope.header_bytes == signer.signed[0]
    assert envelope.auth == hashlib.sha256(b"secret" + envelope.header_bytes).digest()
    assert envelope.header.body_digest == hashlib.sha256(encode(message)).digest()
    assert envelope.body_digest_matches()


def test_body_digest_detects_a_changed_body() -> None:
    data = bytearray(seal(_header(), _train_request(), authenticator=_FixedSigner()))
    data[-1] ^= 0xFF
    assert not unseal(bytes(data)).body_digest_matches()


def test_unauthenticated_envelope_has_no_digest() -> None:
    assert not unseal(seal(_header(), _train_request())).body_digest_matches()


def test_max_size_is_enforced_before_reading() -> None:
    data = seal(_header(), _train_request())
    assert unseal(data, max_size=len(data)).header.message_type == "train_request"
    with pytest.raises(MessageTooLargeError):
        unseal(data, max_size=len(data) - 1)


@pytest.mark.parametrize("size", [0, 200, 70_000])
def test_any_bin_width_is_accepted(size: int) -> None:
    # seal always writes bin32; other writers may pick the smallest bin.
    envelope = unseal(_frame(asdict(_header()), None, b"x" * size))
    assert envelope.body.nbytes == size


# --- malformed envelopes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x93",
        b"\xc0",
        msgpack.packb([asdict(_header()), None]),
        msgpack.packb([asdict(_header()), None, b"\x80", b""]),
        msgpack.packb({"header": asdict(_header())}),
        _frame([1, 2, 3]),
        _frame("header"),
        _frame(asdict(_header()), auth="not bytes"),
        _frame(asdict(_header()), auth=123),
        _frame(asdict(_header()), body="a str, not a bin"),
        _frame(asdict(_header()), body=None),
        _frame(asdict(_header()), body=[1, 2]),
        _frame({1: "int key"}),
    ],
    ids=[
        "empty",
        "array header only",
        "nil",
        "two items",
        "four items",
        "a map",
        "header is a list",
        "header is a str",
        "auth is a str",
        "auth is an int",
        "body is a str",
        "body is nil",
        "body is an array",
        "int header key",
    ],
)
def test_malformed_framing_raises_envelope_error(data: bytes) -> None:
    with pytest.raises(EnvelopeError):
        unseal(data)


@pytest.mark.parametrize(
    "fields",
    [
        _fields(message_id=_DROP),
        _fields(sender_id=_DROP),
        _fields(sender_role=_DROP),
        _fields(recipient=_DROP),
        _fields(message_type=_DROP),
        _fields(unknown_field="x"),
        _fields(message_id=""),
        _fields(message_id=7),
        _fields(sender_id=None),
        _fields(sender_role="admin"),
        _fields(recipient=b"bytes"),
        _fields(request_id=5),
        _fields(experiment_id=["x"]),
        _fields(auth_alg=1),
        _fields(key_id=2.5),
        _fields(created_at="yesterday"),
        _fields(nonce="not bytes"),
        _fields(version=2),
        _fields(version=0),
        _fields(version="1"),
    ],
    ids=[
        "no message_id",
        "no sender_id",
        "no sender_role",
        "no recipient",
        "no message_type",
        "unknown field",
        "empty message_id",
        "int message_id",
        "nil sender_id",
        "unknown role",
        "bytes recipient",
        "int request_id",
        "list experiment_id",
        "int auth_alg",
        "float key_id",
        "str created_at",
        "str nonce",
        "version 2",
        "version 0",
        "str version",
    ],
)
def test_bad_header_fields_raise_envelope_error(fields: dict[str, Any]) -> None:
    with pytest.raises(EnvelopeError):
        unseal(_frame(fields))


def test_unknown_version_is_named() -> None:
    with pytest.raises(EnvelopeError, match="unsupported envelope version 2"):
        unseal(_frame(_fields(version=2)))


def test_truncated_body_raises_envelope_error() -> None:
    data = seal(_header(), _train_request())
    for cut in (1, 10, len(data) // 2):
        with pytest.raises(EnvelopeError):
            unseal(data[:-cut])


def test_truncated_body_length_raises_envelope_error() -> None:
    prefix = b"\x93" + msgpack.packb(asdict(_header())) + msgpack.packb(None)
    for partial in (b"\xc6", b"\xc6\x00\x00", b"\xc5\x00"):
        with pytest.raises(EnvelopeError):
            unseal(prefix + partial)


def test_trailing_bytes_raise_envelope_error() -> None:
    data = seal(_header(), _train_request())
    with pytest.raises(EnvelopeError, match="its header says"):
        unseal(data + b"\x00")


def test_body_length_larger_than_data_raises_envelope_error() -> None:
    prefix = b"\x93" + msgpack.packb(asdict(_header())) + msgpack.packb(None)
    with pytest.raises(EnvelopeError):
        unseal(prefix + struct.pack(">BI", 0xC6, 1000) + b"short")


@given(data=st.binary(max_size=400))
def test_random_bytes_only_raise_envelope_error(data: bytes) -> None:
    with pytest.raises(EnvelopeError):
        unseal(data)


@given(cut=st.integers(1, 200), flip=st.integers(0, 10_000), byte=st.integers(0, 255))
def test_damaged_envelopes_only_raise_envelope_error(cut: int, flip: int, byte: int) -> None:
    data = bytearray(seal(_header(), PingRequest(researcher_id="alice")))
    data[flip % len(data)] = byte
    try:
        envelope = unseal(bytes(data[: len(data) - cut % len(data)]))
    except EnvelopeError:
        return
    assert isinstance(envelope.header, EnvelopeHeader)


# --- AMQP headers ------------------------------------------------------------------------------


def test_amqp_headers_of_a_request() -> None:
    message = _train_request()
    assert amqp_headers(_header(message), message) == {
        "message-type": "train_request",
        "sender": "alice",
        "sender-role": "researcher",
        "recipient": "hospital-a",
        "request-id": "request_1",
        "experiment-id": "exp-1",
        "round": 4,
    }


def test_amqp_headers_without_the_message() -> None:
    headers = amqp_headers(_header(_train_request()))
    assert "round" not in headers
    assert headers["request-id"] == "request_1"


def test_amqp_headers_of_an_error() -> None:
    error = ErrorMessage(request_id="request_1", node_id="hospital-a", code=303, message="no")
    header = EnvelopeHeader.for_message(
        error, sender_id="hospital-a", sender_role="node", recipient="alice"
    )
    assert amqp_headers(header, error) == {
        "message-type": "error",
        "sender": "hospital-a",
        "sender-role": "node",
        "recipient": "alice",
        "request-id": "request_1",
        "error-code": ErrorCode.PLAN_NOT_APPROVED.name,
    }


def test_amqp_headers_of_a_heartbeat() -> None:
    beat = Heartbeat(node_id="hospital-a", interval=5)
    header = EnvelopeHeader.for_message(
        beat, sender_id="hospital-a", sender_role="node", recipient="*"
    )
    assert amqp_headers(header, beat) == {
        "message-type": "heartbeat",
        "sender": "hospital-a",
        "sender-role": "node",
        "recipient": "*",
        "node": "hospital-a",
    }


def test_amqp_headers_of_a_train_reply_carry_its_round() -> None:
    reply = TrainReply(
        request_id="r", researcher_id="a", node_id="n", experiment_id="e", round=0, success=True
    )
    header = EnvelopeHeader.for_message(reply, sender_id="n", sender_role="node", recipient="a")
    assert amqp_headers(header, reply)["round"] == 0


def test_header_as_dict_is_the_wire_map() -> None:
    header = _header()
    assert header.as_dict() == msgpack.unpackb(seal(header, PingRequest(researcher_id="a")))[0]
    assert EnvelopeHeader(**header.as_dict()) == header


def test_the_header_on_the_wire_has_every_field() -> None:
    header = EnvelopeHeader(
        message_id="msg_1", sender_id="alice", sender_role="researcher", recipient="n1",
        message_type="ping_request",
    )  # fmt: skip
    assert list(header.as_dict()) == [field.name for field in dataclasses.fields(EnvelopeHeader)]
    assert EnvelopeHeader(**header.as_dict()) == header
