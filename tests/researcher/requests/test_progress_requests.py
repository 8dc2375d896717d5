"""Progress messages at the researcher: authenticated, routed to their running request, newest
only, handed to its hook; and a sign of work that moves the node's timeout and stall clock."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pytest

import researcher.requests.progress as progress_module
from broker_net.codes import ErrorCode
from broker_net.crypto.authentication import Security
from broker_net.crypto.introductions import introduce
from broker_net.envelope import EnvelopeHeader
from broker_net.frames import frame
from broker_net.messages import ErrorMessage, TrainRequest
from broker_net.progress_messages import PROGRESS_EXPIRATION, ProgressMessage
from broker_net.topology import Topology
from researcher.requests.hooks import RequestHooks
from researcher.requests.ledger import NodeLedger
from researcher.requests.policies import DiscardOnStall, DiscardOnTimeout, RequestStatus
from researcher.requests.progress import ProgressEvent, ProgressRelay
from researcher.requests.router import Requests

RESEARCHER = "alice"


def _progress(request_id: str, sequence: int, node: str = "n1", **values: float) -> ProgressMessage:
    return ProgressMessage(
        request_id=request_id, researcher_id=RESEARCHER, node_id=node, node_name="Node 1",
        experiment_id="exp", round=2, sequence=sequence, values=values,
    )  # fmt: skip


def _security(folder: Path, party: str, role: Any, trusted: str) -> Security:
    return Security.load(folder / "identity", party, role, folder / trusted)


@pytest.mark.anyio
async def test_only_authentic_newer_progress_of_a_waited_node_reaches_the_hook(
    make_transport: Callable[..., Any], topology: Topology, tmp_path: Path
) -> None:
    researcher_dir, node_dir, rogue_dir = tmp_path / "r", tmp_path / "n1", tmp_path / "rogue"
    introduce(RESEARCHER, researcher_dir, {"n1": node_dir})
    introduce("someone-else", tmp_path / "other", {"n1": rogue_dir})  # a key alice never saw
    mine = _security(researcher_dir, RESEARCHER, "researcher", "trusted-nodes")
    node = _security(node_dir, "n1", "node", "trusted-researchers")
    rogue = _security(rogue_dir, "n1", "node", "trusted-researchers")
    reply_queue = topology.researcher_queue(RESEARCHER).name
    events: list[ProgressEvent] = []

    async with (
        make_transport("researcher") as transport, make_transport("node") as node_side,
        Requests(transport, RESEARCHER, topology=topology, security=mine) as requests,
    ):  # fmt: skip
        await node_side.declare(*topology.node_declarations("n1"))

        async def send_as_node(message: Any, security: Security | None) -> None:
            header = EnvelopeHeader.for_message(
                message, sender_id="n1", sender_role="node", recipient=RESEARCHER
            )
            auth = None if security is None else security.authenticator_for(RESEARCHER)
            outgoing = frame(header, message, authenticator=auth, expiration=PROGRESS_EXPIRATION,
                             persistent=False)  # fmt: skip
            await node_side.publish(topology.replies_exchange.name, reply_queue, outgoing)

        request = TrainRequest(
            researcher_id=RESEARCHER, experiment_id="exp", round=2, dataset_id="d",
            training_plan="source", training_plan_class="P",
        )  # fmt: skip
        fed = requests.send(
            request, ["n1"], [DiscardOnTimeout(60)], hooks=RequestHooks(on_progress=events.append)
        )

        async def wait() -> None:
            async with fed:
                pass

        async with anyio.create_task_group() as group:
            group.start_soon(wait)
            async with node_side.consume(topology.node_queue("n1")) as deliveries:
                async for delivery in deliveries:  # the request reached the node
                    await delivery.ack()
                    break
            rid = fed.request_id
            await send_as_node(_progress(rid, 5, loss=0.1), None)  # unauthenticated
            await send_as_node(_progress(rid, 6, loss=0.2), rogue)  # someone else's key
            await send_as_node(_progress(rid, 7, node="n2", loss=0.3), node)  # not its sender
            await send_as_node(_progress("request_unknown", 8, loss=0.4), node)  # no such request
            await send_as_node(_progress(rid, 1, loss=0.5, iteration=10), node)  # the real one
            await send_as_node(_progress(rid, 0, loss=0.9), node)  # older: ignored
            await send_as_node(
                ErrorMessage(request_id=rid, researcher_id=RESEARCHER, node_id="n1",
                             code=ErrorCode.PLAN_FAILED, message="ends the request"),
                node,
            )  # fmt: skip

    assert fed.status() == {"n1": RequestStatus.ERROR}
    (event,) = events
    assert (event.node_id, event.node_name, event.request_id, event.round) == (
        "n1", "Node 1", fed.request_id, 2,
    )  # fmt: skip
    assert (event.experiment_id, event.sequence) == ("exp", 1)
    assert event.values == {"loss": 0.5, "iteration": 10.0}
    assert event.received_at >= event.sent_at.replace(microsecond=0)


def test_progress_moves_a_nodes_timeout_and_stall_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    monkeypatch.setattr(progress_module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    ledger = NodeLedger("request_1", ["n1"], keep_answered=False)
    ledger.entries["n1"].sent_at = 100.0
    states = ledger.watch()
    timeout, stall = DiscardOnTimeout(5), DiscardOnStall(2)
    events: list[ProgressEvent] = []
    relay = ProgressRelay(ledger, events.append)

    # Silent: the timeout runs from the send, and there is nothing to stall yet.
    assert timeout.evaluate(states, 106.0).marks == {"n1": RequestStatus.TIMEOUT}
    assert stall.next_deadline(states) is None

    now[0] = 104.0
    assert relay.offer("n1", _progress("request_1", 0, loss=1.0))
    assert timeout.evaluate(states, 106.0).marks == {}  # 2 s after the progress
    assert timeout.next_deadline(states) == 109.0
    assert stall.evaluate(states, 105.5).marks == {}
    assert stall.evaluate(states, 106.5).marks == {"n1": RequestStatus.TIMEOUT}

    now[0] = 106.0  # progress keeps coming: neither runs out
    assert relay.offer("n1", _progress("request_1", 1, loss=0.5))
    assert stall.evaluate(states, 107.5).marks == {}
    assert timeout.evaluate(states, 110.5).marks == {}
    relay.flush()
    assert [e.sequence for e in events] == [1]  # the newest of the node, once

    ledger.finish(ledger.entries["n1"], RequestStatus.TIMEOUT, "gone")
    assert not relay.offer("n1", _progress("request_1", 2))  # no longer waited for
