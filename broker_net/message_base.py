"""What every message shares: the base models, ids and timestamps.

Message families live in modules on top of these bases; :mod:`broker_net.messages` gathers
them into the :data:`~broker_net.messages.AnyMessage` union.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from broker_net.version import PROTOCOL_VERSION


def new_id(prefix: str) -> str:
    """Return a fresh unique id such as ``request_3f2a...``: 128 random bits in hex."""
    return f"{prefix}_{os.urandom(16).hex()}"


def field_value(message: Any, name: str) -> Any:
    """``message.name``, or ``None`` without such a field (cheaper than ``getattr`` with a
    default on a pydantic model, whose attribute fallback costs more than a small message)."""
    values = getattr(message, "__dict__", None)
    if values is None:
        return getattr(message, name, None)
    return values.get(name)


def utc_now() -> datetime:
    """Return the current time as an aware UTC datetime."""
    return datetime.now(UTC)


class MessageBase(BaseModel):
    """The fields every message has."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    protocol_version: str = PROTOCOL_VERSION


class RequestBase(MessageBase):
    """A request: its id, fresh unless given, and the researcher who asks."""

    request_id: str = Field(default_factory=lambda: new_id("request"), min_length=1)
    researcher_id: str = Field(min_length=1)


class ReplyBase(MessageBase):
    """A reply: the request it answers, who answers and the node's own timestamps."""

    request_id: str = Field(min_length=1)
    researcher_id: str = Field(min_length=1)
    node_id: str = Field(min_length=1)
    node_name: str = ""
    received_at: datetime | None = None
    """When the node started handling the request (node clock)."""
    replied_at: datetime | None = None
    """When the node finished handling it (node clock)."""
