"""The exception tree shared by every broker-net package.

BrokerNetError
├── TransportError
│   ├── ConnectionLostError
│   ├── PublishError
│   │   └── UnroutableError
│   └── BrokerAccessError
├── CodecError (ValueError)
│   └── DecodeError
│       ├── MessageTooLargeError
│       ├── ProtocolVersionError
│       └── EnvelopeError
└── SecurityError
"""

from __future__ import annotations


class BrokerNetError(Exception):
    """Base class of every error raised by broker-net."""


class TransportError(BrokerNetError):
    """Raised when the message broker cannot do what was asked."""


class ConnectionLostError(TransportError):
    """Raised when the connection to the broker is gone and could not be recovered in time."""


class PublishError(TransportError):
    """Raised when the broker refuses (nacks) a published message."""


class UnroutableError(PublishError):
    """Raised when a mandatory message reaches no queue, e.g. a node that never started."""

    def __init__(self, exchange: str, routing_key: str) -> None:
        super().__init__(
            f"no queue is bound to exchange {exchange!r} with routing key {routing_key!r}"
        )
        self.exchange = exchange
        self.routing_key = routing_key


class BrokerAccessError(TransportError):
    """Raised when the broker refuses an operation for lack of permission (ACCESS_REFUSED)."""


class CodecError(BrokerNetError, ValueError):
    """Raised when a value cannot be encoded or decoded."""


class DecodeError(CodecError):
    """Raised for any bytes that are not a valid broker-net message."""


class MessageTooLargeError(DecodeError):
    """Raised when a message is larger than the configured maximum size."""

    def __init__(self, size: int, max_size: int) -> None:
        super().__init__(f"message of {size} bytes exceeds the maximum of {max_size} bytes")
        self.size = size
        self.max_size = max_size


class ProtocolVersionError(DecodeError):
    """Raised when a message speaks a protocol version this side does not understand."""


class EnvelopeError(DecodeError):
    """Raised when the envelope framing around a message is broken."""


class SecurityError(BrokerNetError):
    """Raised when a message fails authentication or decryption."""
