"""The envelope: the unit on the wire, a header and an encoded body.

On the wire an envelope is one msgpack array ``[header, auth, body]``: ``header`` is a map (the
fields of :class:`EnvelopeHeader`), ``auth`` is the signature or MAC over the header's exact bytes
(or nil when unauthenticated) and ``body`` is a bin holding the encoded message. When a message is
authenticated the header carries the body's SHA-256 digest, so one check covers header and body
and the body is verified before anything decodes it.
"""

from __future__ import annotations

import hashlib
import os
import struct
import time
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import msgpack

from broker_net.codec import Parts, encode_parts
from broker_net.errors import EnvelopeError, MessageTooLargeError
from broker_net.message_base import field_value
from broker_net.messages import AnyMessage

Role = Literal["researcher", "node"]
ENVELOPE_VERSION = 1
_HEADER_PEEK = 64 * 1024


@dataclass(slots=True)
class EnvelopeHeader:
    """Who sent what to whom, and when. Everything here is readable before the body is decoded.

    Treat a header as read-only (build a new one to change a field). It is not a frozen
    dataclass because one is built for every message sent and received, and a frozen
    dataclass takes four times as long to build.
    """

    message_id: str
    sender_id: str
    sender_role: Role
    recipient: str
    message_type: str
    request_id: str | None = None
    experiment_id: str | None = None
    created_at: float = field(default_factory=time.time)
    nonce: bytes = field(default_factory=lambda: os.urandom(16))
    auth_alg: str | None = None
    key_id: str | None = None
    body_digest: bytes | None = None
    transfer: dict[str, Any] | None = None
    version: int = ENVELOPE_VERSION

    def as_dict(self) -> dict[str, Any]:
        """The header's fields, as they are packed on the wire."""
        return {
            "message_id": self.message_id,
            "sender_id": self.sender_id,
            "sender_role": self.sender_role,
            "recipient": self.recipient,
            "message_type": self.message_type,
            "request_id": self.request_id,
            "experiment_id": self.experiment_id,
            "created_at": self.created_at,
            "nonce": self.nonce,
            "auth_alg": self.auth_alg,
            "key_id": self.key_id,
            "body_digest": self.body_digest,
            "transfer": self.transfer,
            "version": self.version,
        }

    @classmethod
    def for_message(
        cls, message: AnyMessage, *, sender_id: str, sender_role: Role, recipient: str
    ) -> EnvelopeHeader:
        """Build the header for ``message``, copying its ids and type."""
        # One read of the system's random source gives both the message id and the nonce.
        random = os.urandom(32)
        return cls(
            message_id=f"msg_{random[:16].hex()}",
            sender_id=sender_id,
            sender_role=sender_role,
            recipient=recipient,
            message_type=message.type,
            request_id=field_value(message, "request_id"),
            experiment_id=field_value(message, "experiment_id"),
            created_at=time.time(),
            nonce=random[16:],
        )


class Authenticator(Protocol):
    """Signs outgoing envelopes (implemented by the security layer)."""

    algorithm: str
    key_id: str

    def sign(self, header_bytes: bytes) -> bytes:
        """Return the signature or MAC over the header's exact bytes."""
        ...


@dataclass(frozen=True, slots=True)
class Envelope:
    """An envelope read from the wire; ``body`` is still encoded."""

    header: EnvelopeHeader
    header_bytes: bytes
    auth: bytes | None
    body: memoryview

    def body_digest_matches(self) -> bool:
        """True when the header's body digest equals the body's SHA-256."""
        digest = self.header.body_digest
        return digest is not None and hashlib.sha256(self.body).digest() == digest


def _bin_header(length: int) -> bytes:
    return struct.pack(">BI", 0xC6, length)


def seal_parts(
    header: EnvelopeHeader, body: Parts, *, authenticator: Authenticator | None = None
) -> Parts:
    """Frame an encoded body with its header, as buffers to be joined or written in order."""
    body_len = sum(memoryview(part).nbytes for part in body)
    auth: bytes | None = None
    if authenticator is not None:
        digest = hashlib.sha256()
        for part in body:
            digest.update(part)
        values = header.as_dict() | {
            "auth_alg": authenticator.algorithm,
            "key_id": authenticator.key_id,
            "body_digest": digest.digest(),
        }
        header_bytes = msgpack.packb(values, use_bin_type=True)
        auth = authenticator.sign(header_bytes)
    else:
        header_bytes = msgpack.packb(header.as_dict(), use_bin_type=True)
    prefix = b"\x93" + header_bytes + msgpack.packb(auth) + _bin_header(body_len)
    return [prefix, *body]


def seal(
    header: EnvelopeHeader, message: Any, *, authenticator: Authenticator | None = None
) -> bytes:
    """Encode ``message`` and frame it with ``header`` into the bytes that go on the wire.

    Raises:
        CodecError: the message cannot be encoded.
    """
    return b"".join(seal_parts(header, encode_parts(message), authenticator=authenticator))


def unseal(data: bytes | bytearray | memoryview, *, max_size: int | None = None) -> Envelope:
    """Read the envelope framing without decoding the body.

    Raises:
        MessageTooLargeError: the envelope is over ``max_size`` bytes.
        EnvelopeError: the bytes are not an envelope (wrong shape, bad header fields).
    """
    view = memoryview(data)
    if max_size is not None and view.nbytes > max_size:
        raise MessageTooLargeError(view.nbytes, max_size)
    # Every envelope starts with 0x93, msgpack's fixarray of three items (seal_parts writes it).
    if not view.nbytes or view[0] != 0x93:
        raise EnvelopeError("an envelope is a msgpack array of three items")
    try:
        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=_HEADER_PEEK * 2)
        unpacker.feed(view[1:_HEADER_PEEK])
        raw_header = unpacker.unpack()
        header_end = unpacker.tell() + 1
        auth = unpacker.unpack()
        offset = unpacker.tell() + 1
    except Exception as exc:
        raise EnvelopeError(f"not a broker-net envelope: {type(exc).__name__}: {exc}") from exc
    start = 1
    body = _read_bin(view, offset)
    if not isinstance(raw_header, dict):
        raise EnvelopeError("the envelope header must be a map")
    if auth is not None and not isinstance(auth, bytes):
        raise EnvelopeError("the envelope authentication field must be bytes or nil")
    try:
        header = EnvelopeHeader(**raw_header)
    except TypeError as exc:
        raise EnvelopeError(f"bad envelope header: {exc}") from exc
    _check_header(header)
    return Envelope(header, bytes(view[start:header_end]), auth, body)


_BIN_WIDTHS = {0xC4: 1, 0xC5: 2, 0xC6: 4}
"""Bytes of the length field after each msgpack bin marker."""


def _read_bin(view: memoryview, offset: int) -> memoryview:
    if offset >= view.nbytes:
        raise EnvelopeError("the envelope has no body")
    width = _BIN_WIDTHS.get(view[offset])
    if width is None:
        raise EnvelopeError("the envelope body must be a msgpack bin")
    if offset + 1 + width > view.nbytes:
        raise EnvelopeError("truncated envelope body length")
    length = int.from_bytes(view[offset + 1 : offset + 1 + width], "big")
    start = offset + 1 + width
    if start + length != view.nbytes:
        raise EnvelopeError(
            f"envelope body holds {view.nbytes - start} bytes, its header says {length}"
        )
    return view[start:]


_STR_FIELDS = ("message_id", "sender_id", "recipient", "message_type")
_OPTIONAL_STR_FIELDS = ("request_id", "experiment_id", "auth_alg", "key_id")


def _check_header(header: EnvelopeHeader) -> None:
    # Every envelope received goes through here: plain comparisons first, the named checks
    # below only to say which field is wrong.
    if (
        type(header.message_id) is str and header.message_id
        and type(header.sender_id) is str and header.sender_id
        and type(header.recipient) is str and header.recipient
        and type(header.message_type) is str and header.message_type
        and (header.sender_role == "researcher" or header.sender_role == "node")
        and (header.request_id is None or type(header.request_id) is str)
        and (header.experiment_id is None or type(header.experiment_id) is str)
        and (header.auth_alg is None or type(header.auth_alg) is str)
        and (header.key_id is None or type(header.key_id) is str)
        and type(header.created_at) is float
        and type(header.nonce) is bytes
        and header.version == ENVELOPE_VERSION
        and type(header.version) is int
    ):  # fmt: skip
        return
    _check_header_fields(header)


def _check_header_fields(header: EnvelopeHeader) -> None:
    for name in _STR_FIELDS:
        if not isinstance(getattr(header, name), str) or not getattr(header, name):
            raise EnvelopeError(f"envelope header field {name!r} must be a non-empty string")
    if header.sender_role not in ("researcher", "node"):
        raise EnvelopeError(f"unknown sender role {header.sender_role!r}")
    for name in _OPTIONAL_STR_FIELDS:
        value = getattr(header, name)
        if value is not None and not isinstance(value, str):
            raise EnvelopeError(f"envelope header field {name!r} must be a string")
    if not isinstance(header.created_at, int | float):
        raise EnvelopeError("envelope header field 'created_at' must be a number")
    if not isinstance(header.nonce, bytes):
        raise EnvelopeError("envelope header field 'nonce' must be bytes")
    if header.version != ENVELOPE_VERSION:
        raise EnvelopeError(f"unsupported envelope version {header.version!r}")
