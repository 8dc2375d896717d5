"""docs/protocol.md stays true: its field tables, error codes, names and examples match the code."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from broker_net.codec import encode
from broker_net.codes import ErrorCode
from broker_net.envelope import EnvelopeHeader, seal
from broker_net.messages import MESSAGE_TYPES, DatasetInfo, ListReply, PingRequest
from broker_net.topology import Topology

DOC = (Path(__file__).parents[2] / "docs" / "protocol.md").read_text()
COMMON = {"protocol_version", "type"}
REQUEST_COMMON = COMMON | {"request_id", "researcher_id"}
REPLY_COMMON = REQUEST_COMMON | {"node_id", "node_name", "received_at", "replied_at"}


def _section(title: str) -> str:
    start = DOC.index(title)
    following = re.search(r"\n#{2,4} ", DOC[start + len(title) :])
    end = start + len(title) + following.start() if following else len(DOC)
    return DOC[start:end]


def _table_fields(text: str) -> set[str]:
    return set(re.findall(r"^\| `([a-z_]+)` \|", text, flags=re.MULTILINE))


@pytest.mark.parametrize("tag", sorted(MESSAGE_TYPES))
def test_every_message_field_is_documented(tag: str) -> None:
    cls = MESSAGE_TYPES[tag]
    fields = set(cls.model_fields)
    if tag.endswith("_request"):
        fields -= REQUEST_COMMON
    elif tag.endswith("_reply"):
        fields -= REPLY_COMMON
    else:
        fields -= COMMON
    if cls is ListReply:  # DatasetInfo's table sits in the list_reply section
        fields |= set(DatasetInfo.model_fields)
    assert _table_fields(_section(f"#### `{tag}`\n" if "_" in tag else f"### `{tag}`\n")) == fields


def test_common_fields_are_documented() -> None:
    common = _section("### Common fields")
    assert _table_fields(common) == (REPLY_COMMON - COMMON)


def test_every_error_code_is_documented() -> None:
    table = _section("## 7. Error codes")
    for code in ErrorCode:
        assert f"| {code.value} | `{code.name}` |" in table


def test_topology_names_are_documented() -> None:
    topology = Topology("NS")
    for exchange in (
        topology.requests_exchange,
        topology.replies_exchange,
        topology.presence_exchange,
        topology.dead_letter_exchange,
    ):
        name = exchange.name.replace("NS", "{ns}")
        assert f"| `{name}` | {exchange.kind} |" in DOC
    for name in (
        "{ns}.node.{node_id}.requests",
        "{ns}.researcher.{researcher_id}.replies",
        "{ns}.researcher.{researcher_id}.presence",
        "{ns}.dead-letter",
    ):
        assert f"| `{name}` |" in DOC


def test_array_example_is_exact() -> None:
    data = encode(np.array([1.0, 2.0], dtype="<f4"))
    example = _section("### Numpy arrays: extension type 1")
    hex_lines = re.findall(r"^((?:[0-9a-f]{2} )*[0-9a-f]{2})\s{2,}", example, flags=re.MULTILINE)
    assert bytes.fromhex(" ".join(hex_lines)) == data


def test_envelope_example_is_exact() -> None:
    message = PingRequest(researcher_id="alice", request_id="request_1")
    header = EnvelopeHeader(
        message_id="msg_1",
        sender_id="alice",
        sender_role="researcher",
        recipient="hospital-a",
        message_type="ping_request",
        request_id="request_1",
        created_at=1700000000.5,
        nonce=bytes(16),
    )
    data = seal(header, message)
    assert f"{len(data)} bytes in all" in DOC
    assert "cb " + data[data.index(b"\xcb") + 1 :][:8].hex(" ") in DOC
    assert "c6 " + data[data.index(b"\xc6\x00\x00\x00") + 1 :][:4].hex(" ") in DOC
