"""Training progress: what a node tells the researcher while a round runs.

A plan reports scalars (its iteration, its loss, anything else) during a round; the node sends
them to the researcher who asked for the round as :class:`ProgressMessage`. Progress is best
effort: rate-limited by the node, dropped rather than queued when the researcher is slow,
never acknowledged and never replayed. It is not a reply: the request is answered later by
its own reply, as always.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field, field_validator

from broker_net.message_base import MessageBase, utc_now

PROGRESS_EXPIRATION = 10.0
"""Seconds a progress message waits in the researcher's queue before the broker drops it."""
MAX_PROGRESS_VALUES = 32
"""How many scalars one progress message may carry."""
MAX_VALUE_NAME = 64
"""How long the name of one scalar may be."""


class ProgressMessage(MessageBase):
    """A running request's progress on one node: the latest scalars its plan reported.

    ``sequence`` counts the messages sent for one request on one node, from 0; a researcher
    keeps the highest it saw and ignores older ones (the broker may drop any of them).
    """

    type: Literal["progress"] = "progress"
    request_id: str = Field(min_length=1)
    researcher_id: str = Field(min_length=1)
    node_id: str = Field(min_length=1)
    node_name: str = ""
    experiment_id: str = Field(min_length=1)
    round: int = Field(ge=0)
    sequence: int = Field(ge=0)
    sent_at: datetime = Field(default_factory=utc_now)
    values: dict[str, float] = Field(default_factory=dict)

    @field_validator("values")
    @classmethod
    def _check_values(cls, values: dict[str, float]) -> dict[str, float]:
        if len(values) > MAX_PROGRESS_VALUES:
            raise ValueError(f"at most {MAX_PROGRESS_VALUES} progress values, got {len(values)}")
        for name in values:
            if len(name) > MAX_VALUE_NAME:
                raise ValueError(f"a progress value's name has at most {MAX_VALUE_NAME} characters")
        return values
