"""The frame layer: messages to AMQP messages and back, with every refusal typed."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from broker_net.chunking import TRANSFER_ERROR, TRANSFER_ERROR_REASON
from broker_net.codec import encode
from broker_net.codes import ErrorCode
from broker_net.crypto.authentication import Security
from broker_net.crypto.identities import Identity, TrustStore
from broker_net.envelope import EnvelopeHeader, seal, seal_parts
from broker_net.frames import FrameRefused, amqp_headers, frame, open_frame, read_message
from broker_net.messages import PingRequest, TrainRequest
from broker_net.transport import Delivery, OutgoingMessage

RESEARCHER = Identity.generate("lab", "researcher")
NODE = Identity.generate("hospital-a", "node")


def _security(own: Identity, peer: Identity) -> Security:
    return Security(own, TrustStore((peer.public(),)))


def _header(message: Any) -> EnvelopeHeader:
    return EnvelopeHeader.for_message(
        message, sender_id="lab", sender_role="researcher", recipient="hospital-a"
    )


async def _settle(*_: Any) -> None:
    return None


def _delivery(outgoing: OutgoingMessage, **changes: Any) -> Delivery:
    fields: dict[str, Any] = {
        "body": outgoing.body_bytes(),
        "message_id": outgoing.message_id,
        "type": outgoing.type,
        "correlation_id": outgoing.correlation_id,
        "reply_to": outgoing.reply_to,
        "headers": dict(outgoing.headers),
        "redelivered": False,
        "exchange": "x",
        "routing_key": "hospital-a",
        "_ack": _settle,
        "_reject": _settle,
    }
    return Delivery(**(fields | changes))


def _train_request() -> TrainRequest:
    return TrainRequest(
        researcher_id="lab", experiment_id="exp-1", round=3, training_plan="class P: ...",
        training_plan_class="P", dataset_id="d1", params={"w": np.arange(6, dtype=np.float32)},
    )  # fmt: skip


def test_frame_sets_every_amqp_property_from_the_header() -> None:
    message = _train_request()
    header = _header(message)
    outgoing = frame(header, message, reply_to="q.replies", expiration=5.0, persistent=False)
    assert outgoing.message_id == header.message_id
    assert outgoing.type == "train_request"
    assert outgoing.correlation_id == message.request_id == header.request_id
    assert (outgoing.reply_to, outgoing.expiration, outgoing.persistent) == (
        "q.replies",
        5.0,
        False,
    )
    assert outgoing.headers == amqp_headers(header, message)
    assert outgoing.headers["round"] == 3 and outgoing.headers["experiment-id"] == "exp-1"


def test_frame_is_byte_identical_to_sealing_the_message() -> None:
    message = _train_request()
    header = _header(message)
    assert frame(header, message).body_bytes() == seal(header, message)


def test_a_framed_message_opens_to_the_same_message() -> None:
    message = _train_request()
    sender, receiver = _security(RESEARCHER, NODE), _security(NODE, RESEARCHER)
    header = _header(message)
    outgoing = frame(header, message, authenticator=sender.authenticator_for("hospital-a"))
    incoming = open_frame(_delivery(outgoing), verifier=receiver)
    assert incoming.header.message_id == header.message_id
    assert incoming.request_id == message.request_id
    assert incoming.replayed is None
    opened = read_message(incoming)
    assert isinstance(opened, TrainRequest)
    assert np.array_equal(opened.params["w"], message.params["w"])  # type: ignore[index]


def test_unreadable_bytes_are_refused_without_an_envelope() -> None:
    outgoing = frame(_header(PingRequest(researcher_id="lab")), PingRequest(researcher_id="lab"))
    with pytest.raises(FrameRefused) as refused:
        open_frame(_delivery(outgoing, body=b"junk"))
    assert refused.value.code is ErrorCode.MALFORMED_MESSAGE
    assert (refused.value.stage, refused.value.envelope) == ("envelope", None)


def test_an_oversized_envelope_is_refused_as_too_large() -> None:
    message = _train_request()
    outgoing = frame(_header(message), message)
    with pytest.raises(FrameRefused) as refused:
        open_frame(_delivery(outgoing), max_size=64)
    assert refused.value.code is ErrorCode.MESSAGE_TOO_LARGE


def test_a_broken_transfer_is_refused_with_its_own_code() -> None:
    outgoing = frame(_header(PingRequest(researcher_id="lab")), PingRequest(researcher_id="lab"))
    headers = {TRANSFER_ERROR: "TRANSFER_CORRUPTED", TRANSFER_ERROR_REASON: "digest mismatch"}
    with pytest.raises(FrameRefused) as refused:
        open_frame(_delivery(outgoing, body=b"", headers=headers))
    assert refused.value.code is ErrorCode.TRANSFER_CORRUPTED
    assert (refused.value.stage, refused.value.reason) == ("transfer", "digest mismatch")


def test_an_unsigned_envelope_is_refused_with_the_envelope_kept() -> None:
    message = PingRequest(researcher_id="lab")
    outgoing = frame(_header(message), message)
    with pytest.raises(FrameRefused) as refused:
        open_frame(_delivery(outgoing), verifier=_security(NODE, RESEARCHER))
    assert refused.value.code is ErrorCode.UNSIGNED_MESSAGE
    assert refused.value.stage == "authentication"
    assert refused.value.envelope is not None
    assert refused.value.envelope.header.request_id == message.request_id


def test_a_replay_is_refused_unless_the_caller_accepts_replays() -> None:
    message = PingRequest(researcher_id="lab")
    sender, receiver = _security(RESEARCHER, NODE), _security(NODE, RESEARCHER)
    outgoing = frame(
        _header(message), message, authenticator=sender.authenticator_for("hospital-a")
    )
    open_frame(_delivery(outgoing), verifier=receiver)
    again = open_frame(_delivery(outgoing), verifier=receiver, accept_replays=True)
    assert again.replayed is not None
    with pytest.raises(FrameRefused) as refused:
        open_frame(_delivery(outgoing), verifier=receiver)
    assert refused.value.code is ErrorCode.REPLAYED_MESSAGE


def test_an_invalid_body_is_refused_when_read() -> None:
    message = PingRequest(researcher_id="lab")
    header = _header(message)
    bad = encode({"type": "ping_request", "protocol_version": "1.0"})
    body = b"".join(seal_parts(header, [bad]))
    incoming = open_frame(_delivery(frame(header, message), body=body))
    with pytest.raises(FrameRefused) as refused:
        read_message(incoming)
    assert refused.value.stage == "message"
    assert refused.value.code in {ErrorCode.INVALID_MESSAGE, ErrorCode.MALFORMED_MESSAGE}
