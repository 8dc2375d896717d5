"""Frames: where a typed message becomes an AMQP message, and a delivery becomes one again.

Both parties go through these functions only; no other module assembles AMQP properties and
headers, and none unseals, verifies or decodes a delivery by itself::

    outgoing = frame(header, message, authenticator=auth, reply_to=queue)   # to publish
    incoming = open_frame(delivery, verifier=security)                     # or FrameRefused
    message = read_message(incoming)                                        # or FrameRefused

Opening is two steps because a node answers a redelivered request from its stored reply
without decoding it again; :func:`read_message` decodes the body once the caller needs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeAlias

from broker_net.chunking import failure
from broker_net.codec import (
    DEFAULT_MAX_SIZE,
    MessageValidationError,
    Parts,
    decode_message,
    encode_parts,
)
from broker_net.codes import ErrorCode
from broker_net.crypto.identities import MisdirectedMessageError, ReplayedMessageError
from broker_net.envelope import Authenticator, Envelope, EnvelopeHeader, seal_parts, unseal
from broker_net.errors import (
    BrokerNetError,
    DecodeError,
    MessageTooLargeError,
    ProtocolVersionError,
    SecurityError,
)
from broker_net.message_base import field_value
from broker_net.messages import AnyMessage, ErrorMessage, Heartbeat
from broker_net.transport import Body, Delivery, OutgoingMessage

RefusalStage: TypeAlias = Literal["transfer", "envelope", "authentication", "message"]


class EnvelopeVerifier(Protocol):
    """Authenticates an envelope before anything decodes it (the security layer's ``Security``).

    ``verify`` raises a :class:`~broker_net.errors.SecurityError` for an envelope to refuse.
    """

    def verify(self, envelope: Envelope) -> Any: ...


class FrameRefused(BrokerNetError):
    """Raised when a delivery cannot be used: a broken transfer, bytes that are no envelope, a
    failed authentication, or a body that does not decode to a valid message.

    Attributes:
        code: what to answer with.
        reason: what happened, for a person.
        stage: where it failed: ``transfer`` (chunks not put back together), ``envelope``
            (no envelope), ``authentication`` or ``message`` (the body).
        envelope: the envelope, when its framing could be read (an authentication or a body
            failure); ``None`` when the bytes were unreadable.
        cause: the underlying error.
    """

    def __init__(
        self,
        code: ErrorCode,
        reason: str,
        *,
        stage: RefusalStage = "envelope",
        envelope: Envelope | None = None,
        cause: Exception | None = None,
    ) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.stage = stage
        self.envelope = envelope
        self.cause = cause


@dataclass(frozen=True, slots=True)
class IncomingFrame:
    """A delivery whose envelope was read and authenticated; its body is still encoded.

    Attributes:
        delivery: the delivery it came in; settle it once handled.
        envelope: the envelope read from it.
        replayed: set when the envelope was authentic but seen before, and the caller chose to
            accept replays (a node answers a redelivered request from its stored reply).
    """

    delivery: Delivery
    envelope: Envelope
    replayed: ReplayedMessageError | None = None

    @property
    def header(self) -> EnvelopeHeader:
        """The envelope's header."""
        return self.envelope.header

    @property
    def request_id(self) -> str | None:
        """The request this frame belongs to: the header's, else the AMQP correlation id."""
        return self.envelope.header.request_id or self.delivery.correlation_id


# --- outgoing ----------------------------------------------------------------------------------


def frame(
    header: EnvelopeHeader,
    message: AnyMessage,
    *,
    authenticator: Authenticator | None = None,
    encoded: Parts | None = None,
    reply_to: str | None = None,
    expiration: float | None = None,
    persistent: bool = True,
) -> OutgoingMessage:
    """Seal ``message`` under ``header`` into the AMQP message to publish.

    Args:
        header: the envelope header (its message id, type and request id become the AMQP
            message id, type and correlation id).
        message: the message.
        authenticator: signs or MACs the envelope; ``None`` sends it unauthenticated.
        encoded: ``message`` already encoded (a broadcast is encoded once for every node).
        reply_to: the queue replies go to.
        expiration: seconds after which an unconsumed message is dead-lettered.
        persistent: written to disk by the broker.

    Raises:
        CodecError: the message cannot be encoded.
    """
    body = encoded if encoded is not None else encode_parts(message)
    parts = seal_parts(header, body, authenticator=authenticator)
    sealed: Body = b"".join(parts) if len(parts) <= 2 else tuple(parts)
    return frame_sealed(
        header, sealed, message=message, reply_to=reply_to, expiration=expiration,
        persistent=persistent,
    )  # fmt: skip


def frame_sealed(
    header: EnvelopeHeader,
    body: Body,
    *,
    message: AnyMessage | None = None,
    reply_to: str | None = None,
    expiration: float | None = None,
    persistent: bool = True,
) -> OutgoingMessage:
    """The AMQP message around an envelope already sealed under ``header`` (a stored reply).

    ``message``, when given, adds its round, error code or node to the AMQP headers.
    """
    return OutgoingMessage(
        body=body,
        message_id=header.message_id,
        type=header.message_type,
        correlation_id=header.request_id,
        reply_to=reply_to,
        headers=amqp_headers(header, message),
        expiration=expiration,
        persistent=persistent,
    )


def amqp_headers(header: EnvelopeHeader, message: AnyMessage | None = None) -> dict[str, Any]:
    """The AMQP headers a person sees in the RabbitMQ management UI for this envelope."""
    headers: dict[str, Any] = {
        "message-type": header.message_type,
        "sender": header.sender_id,
        "sender-role": header.sender_role,
        "recipient": header.recipient,
    }
    if header.request_id:
        headers["request-id"] = header.request_id
    if header.experiment_id:
        headers["experiment-id"] = header.experiment_id
    if message is not None:
        round_ = field_value(message, "round")
        if isinstance(round_, int):
            headers["round"] = round_
        if isinstance(message, ErrorMessage):
            headers["error-code"] = message.code.name
        if isinstance(message, Heartbeat):
            headers["node"] = message.node_id
    return headers


# --- incoming ----------------------------------------------------------------------------------


def open_frame(
    delivery: Delivery,
    *,
    verifier: EnvelopeVerifier | None = None,
    max_size: int | None = None,
    accept_replays: bool = False,
) -> IncomingFrame:
    """Read and authenticate a delivery's envelope, without decoding its body.

    Args:
        delivery: what the broker delivered.
        verifier: authenticates the envelope; ``None`` accepts any envelope (security off).
        max_size: the largest envelope accepted, in bytes.
        accept_replays: hand up an authentic envelope seen before, with
            :attr:`IncomingFrame.replayed` set, instead of refusing it.

    Raises:
        FrameRefused: the transfer broke, the bytes are no envelope (``envelope`` is ``None``),
            or the envelope failed authentication (``envelope`` is set).
    """
    broken = failure(delivery)
    if broken is not None:
        code = ErrorCode.__members__.get(broken.code, ErrorCode.TRANSFER_ERROR)
        raise FrameRefused(code, broken.reason, stage="transfer")
    try:
        envelope = unseal(delivery.body, max_size=max_size)
    except DecodeError as exc:
        raise FrameRefused(decode_error_code(exc), str(exc), cause=exc) from exc
    replayed: ReplayedMessageError | None = None
    if verifier is not None:
        try:
            verifier.verify(envelope)
        except ReplayedMessageError as exc:
            if not accept_replays or isinstance(exc, MisdirectedMessageError):
                raise _refused(exc, envelope) from exc
            replayed = exc
        except SecurityError as exc:
            raise _refused(exc, envelope) from exc
    return IncomingFrame(delivery, envelope, replayed)


def read_message(incoming: IncomingFrame, *, max_size: int = DEFAULT_MAX_SIZE) -> AnyMessage:
    """Decode an opened frame's body into its message.

    Raises:
        FrameRefused: the body is too large, of an unsupported protocol version, malformed or
            not a valid message (``envelope`` is set).
    """
    try:
        return decode_message(incoming.envelope.body, max_size=max_size)
    except DecodeError as exc:
        code = decode_error_code(exc)
        raise FrameRefused(
            code, str(exc), stage="message", envelope=incoming.envelope, cause=exc
        ) from exc


def decode_error_code(exc: DecodeError) -> ErrorCode:
    """The error code that answers a message failing to decode with ``exc``."""
    return next(code for cls, code in _DECODE_CODES if isinstance(exc, cls))


_DECODE_CODES: list[tuple[type[Exception], ErrorCode]] = [
    (MessageTooLargeError, ErrorCode.MESSAGE_TOO_LARGE),
    (ProtocolVersionError, ErrorCode.UNSUPPORTED_VERSION),
    (MessageValidationError, ErrorCode.INVALID_MESSAGE),
    (DecodeError, ErrorCode.MALFORMED_MESSAGE),
]


def _refused(exc: SecurityError, envelope: Envelope) -> FrameRefused:
    code = getattr(exc, "code", ErrorCode.SECURITY_ERROR)
    return FrameRefused(code, str(exc), stage="authentication", envelope=envelope, cause=exc)
