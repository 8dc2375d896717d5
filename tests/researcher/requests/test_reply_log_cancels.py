"""The reply log counts the cancels of a request that no node has answered yet."""

from __future__ import annotations

from broker_net.messages import CancelReply
from researcher.requests.reply_log import ReplyLog


def _answer(cancel_id: str, node: str) -> CancelReply:
    return CancelReply(
        request_id=cancel_id, researcher_id="alice", node_id=node,
        target_request_id="request_1", cancelled=True, state="running",
    )  # fmt: skip


def test_cancels_count_as_unanswered_until_their_answer_arrives() -> None:
    log = ReplyLog()
    log.expect_cancels("request_1", ["cancel_a", "cancel_b"])
    assert log.cancels_unanswered("request_1") == 2
    assert log.cancels_unanswered("request_2") == 0
    log.park("cancel_a", "n1", _answer("cancel_a", "n1"), 0.0)
    assert log.cancels_unanswered("request_1") == 1
    log.park("cancel_b", "n2", _answer("cancel_b", "n2"), 0.0)
    assert log.cancels_unanswered("request_1") == 0
    assert log.parked() == {}  # answers to cancels are logged, never parked
