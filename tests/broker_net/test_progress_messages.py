"""ProgressMessage: its rules, its place among the messages, and its bytes both ways."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from broker_net.codec import decode_message, encode
from broker_net.messages import MESSAGE_TYPES, REPLY_TYPES, message_adapter
from broker_net.progress_messages import MAX_PROGRESS_VALUES, ProgressMessage

IDS: dict[str, Any] = {
    "request_id": "request_1", "researcher_id": "alice", "node_id": "n1",
    "experiment_id": "exp", "round": 2, "sequence": 0,
}  # fmt: skip


def test_progress_is_a_message_type_but_not_a_reply() -> None:
    assert MESSAGE_TYPES["progress"] is ProgressMessage
    assert ProgressMessage not in REPLY_TYPES.values()
    parsed = message_adapter.validate_python({"type": "progress", **IDS, "values": {"loss": 1}})
    assert isinstance(parsed, ProgressMessage)
    assert parsed.values == {"loss": 1.0}


def test_progress_goes_through_the_codec_unchanged() -> None:
    message = ProgressMessage(**IDS, node_name="A", values={"iteration": 7.0, "loss": 0.125})
    decoded = decode_message(encode(message))
    assert decoded == message


@pytest.mark.parametrize(
    "changes",
    [
        {"values": {f"v{i}": 1.0 for i in range(MAX_PROGRESS_VALUES + 1)}},
        {"values": {"x" * 65: 1.0}},
        {"values": {"loss": "high"}},
        {"round": -1},
        {"sequence": -1},
        {"request_id": ""},
        {"unknown": 1},
    ],
)
def test_bad_progress_is_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ProgressMessage.model_validate({**IDS, **changes})
