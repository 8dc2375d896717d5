"""aio-pika and aiormq errors, translated into :mod:`broker_net.errors` classes."""

from __future__ import annotations

import aiormq

from broker_net.errors import BrokerAccessError, ConnectionLostError, TransportError

RETRYABLE = (
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.ConnectionClosed,
    aiormq.exceptions.AMQPConnectionError,
    ConnectionError,
    RuntimeError,
)
"""Errors of a channel or connection going away: the operation is tried again."""


def translate(exc: BaseException) -> TransportError:
    """The :class:`TransportError` that stands for an aio-pika or aiormq error."""
    if isinstance(
        exc, aiormq.exceptions.ChannelAccessRefused | aiormq.exceptions.ProbableAuthenticationError
    ):
        return BrokerAccessError(str(exc))
    if isinstance(exc, aiormq.exceptions.ConnectionClosed | ConnectionError):
        return ConnectionLostError(str(exc))
    return TransportError(f"{type(exc).__name__}: {exc}")
