"""The request layer on the in-memory transport: fast checks of matching and bookkeeping."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import pytest

from broker_net.envelope import EnvelopeHeader, seal
from broker_net.memory import MemoryBroker, MemoryTransport
from broker_net.messages import PingReply, PingRequest
from broker_net.topology import Topology
from broker_net.transport import OutgoingMessage
from node_agent.agent import NodeAgent
from node_agent.context import NodeContext
from node_agent.handlers import HANDLERS
from node_agent.settings import NodeSettings
from researcher.requests.federated import MessagesByNode
from researcher.requests.hooks import RequestHooks
from researcher.requests.ledger import Receipt
from researcher.requests.policies import DiscardOnTimeout, RequestStatus, StopOnTimeout
from researcher.requests.router import Requests

pytestmark = pytest.mark.anyio
TOPOLOGY = Topology("mem")


def _slow_ping(delay: float):
    async def handle(request: PingRequest, context: NodeContext) -> PingReply:
        await anyio.sleep(delay)
        return await HANDLERS["ping_request"](request, context)

    return handle


@pytest.fixture
async def network(tmp_path: Path) -> AsyncIterator[tuple[MemoryBroker, Requests]]:
    broker = MemoryBroker()
    delays = {"n1": 0.0, "n2": 0.0, "slow": 0.6}
    async with MemoryTransport(broker) as researcher_transport:
        async with Requests(researcher_transport, "alice", topology=TOPOLOGY) as requests:
            async with AsyncExitStack() as stack:
                for node, delay in delays.items():
                    settings = NodeSettings(
                        node_id=node, data_dir=tmp_path / node, namespace="mem", security=False
                    )
                    transport = await stack.enter_async_context(MemoryTransport(broker))
                    handlers = dict(HANDLERS, ping_request=_slow_ping(delay))
                    await stack.enter_async_context(
                        NodeAgent(settings, transport, handlers=handlers, shutdown_grace=0.1)
                    )
                yield broker, requests


def _ping() -> PingRequest:
    return PingRequest(researcher_id="alice")


async def test_sub_second_timeouts_end_the_wait(network: tuple[MemoryBroker, Requests]) -> None:
    _, requests = network
    started = time.monotonic()
    fed = await requests.request(_ping(), ["n1", "slow"], [DiscardOnTimeout(0.2)])
    assert 0.2 <= time.monotonic() - started < 0.5
    assert fed.status() == {"n1": RequestStatus.SUCCESS, "slow": RequestStatus.TIMEOUT}
    with anyio.fail_after(2):
        while not requests.late_replies:
            await anyio.sleep(0.02)
    assert requests.late_replies[-1].node_id == "slow"
    assert requests.late_replies[-1].request_id == fed.request_id


async def test_the_same_policies_serve_many_requests(
    network: tuple[MemoryBroker, Requests],
) -> None:
    _, requests = network
    policies = [StopOnTimeout(0.3)]
    for _ in range(3):
        fed = await requests.request(_ping(), ["n1", "n2"], policies)
        assert fed.status() == {"n1": RequestStatus.SUCCESS, "n2": RequestStatus.SUCCESS}
        assert fed.policy_report() is None
    assert len(policies) == 1


async def test_each_node_gets_its_own_message(network: tuple[MemoryBroker, Requests]) -> None:
    _, requests = network
    fed = await requests.request(
        MessagesByNode(n1=_ping(), n2=_ping()), policies=[DiscardOnTimeout(1)]
    )
    assert set(fed.replies()) == {"n1", "n2"}
    assert {reply.request_id for reply in fed.replies().values()} == {fed.request_id}


async def test_a_node_without_a_message_is_a_clear_error(
    network: tuple[MemoryBroker, Requests],
) -> None:
    _, requests = network
    with pytest.raises(ValueError, match="no message for nodes"):
        requests.send(MessagesByNode(n1=_ping()), ["n1", "n2"])


async def test_without_timeout_policies_a_default_timeout_applies(
    network: tuple[MemoryBroker, Requests],
) -> None:
    _, requests = network
    requests.default_timeout = 0.2
    fed = await requests.request(_ping(), ["slow"])
    assert fed.status() == {"slow": RequestStatus.TIMEOUT}


async def test_a_duplicate_reply_is_ignored_and_the_first_kept(
    network: tuple[MemoryBroker, Requests],
) -> None:
    broker, requests = network
    async with requests.send(_ping(), ["slow"], [DiscardOnTimeout(2)]) as fed:
        pass
    first = fed.replies()["slow"]
    forged = PingReply(
        request_id=fed.request_id, researcher_id="alice", node_id="slow", agent_version="forged"
    )
    header = EnvelopeHeader.for_message(
        forged, sender_id="slow", sender_role="node", recipient="alice"
    )
    async with MemoryTransport(broker) as transport:
        await transport.publish(
            TOPOLOGY.replies_exchange.name,
            requests.reply_queue,
            OutgoingMessage(body=seal(header, forged), message_id="dup", type="ping_reply"),
        )
    with anyio.fail_after(1):
        while not any(late.message.agent_version == "forged" for late in requests.late_replies):
            await anyio.sleep(0.01)
    assert fed.replies()["slow"] is first


async def test_nodes_default_to_those_online(network: tuple[MemoryBroker, Requests]) -> None:
    _, requests = network
    await requests.wait_for_nodes(["n1", "n2", "slow"], timeout=5)
    fed = await requests.ping(timeout=2)
    assert set(fed.replies()) == {"n1", "n2", "slow"}
    assert all(t.processing is not None for t in fed.timings().values())


async def test_a_request_resumed_by_id_collects_replies_sent_before_it(
    network: tuple[MemoryBroker, Requests],
) -> None:
    _, requests = network
    # The slow node answers after 0.6 s: its reply cannot come while the request is still
    # being sent (a node answering at once may, its worker taking the request at once).
    first = requests.send(_ping(), ["slow"], [DiscardOnTimeout(5)])
    # Simulate a process that sent the request and died: send, then forget the request.
    requests.track(first)
    await first._send_all()
    requests._pending.pop(first.request_id)
    with anyio.fail_after(5):
        while len(requests.parked_replies().get(first.request_id, [])) < 1:
            await anyio.sleep(0.01)

    resumed = await requests.request(
        _ping(), ["slow"], [DiscardOnTimeout(5)],
        request_id=first.request_id, already_sent=first.sent_at(),
    )  # fmt: skip

    assert resumed.status() == {"slow": RequestStatus.SUCCESS}
    assert requests.parked_replies() == {}


async def test_hooks_see_the_send_and_every_answer_once(
    network: tuple[MemoryBroker, Requests],
) -> None:
    _, requests = network
    events: list[tuple[str, str, object]] = []
    hooks = RequestHooks(
        on_sending=lambda rid, nodes: events.append(("sending", rid, list(nodes))),
        on_sent=lambda rid, sent: events.append(("sent", rid, sorted(sent))),
        on_answer=lambda rid, node: events.append(("answer", rid, node)),
    )

    fed = await requests.request(_ping(), ["n1", "n2", "slow"], [DiscardOnTimeout(5)], hooks=hooks)

    rid = fed.request_id
    assert events[:2] == [
        ("sending", rid, ["n1", "n2", "slow"]),
        ("sent", rid, ["n1", "n2", "slow"]),
    ]
    assert sorted(events[2:]) == [
        ("answer", rid, "n1"),
        ("answer", rid, "n2"),
        ("answer", rid, "slow"),
    ]


async def test_hooks_and_arguments_cannot_name_two_request_ids(
    network: tuple[MemoryBroker, Requests],
) -> None:
    _, requests = network
    with pytest.raises(ValueError, match="request_id"):
        requests.send(_ping(), ["n1"], request_id="a", hooks=RequestHooks(request_id="b"))
    fed = requests.send(_ping(), ["n1"], request_id="a", hooks=RequestHooks(request_id="a"))
    assert fed.request_id == "a"
    assert requests.send(_ping(), ["n1"], hooks=RequestHooks(request_id="c")).request_id == "c"


async def test_a_finished_request_says_which_replies_come_too_late(
    network: tuple[MemoryBroker, Requests],
) -> None:
    _, requests = network
    fed = await requests.request(_ping(), ["n1", "slow"], [DiscardOnTimeout(0.2)])
    reply = fed.replies()["n1"]

    assert fed.deliver("slow", reply) is Receipt.LATE
    assert fed.deliver("n1", reply) is Receipt.IGNORED
    assert fed.deliver("stranger", reply) is Receipt.IGNORED
    assert fed.status() == {"n1": RequestStatus.SUCCESS, "slow": RequestStatus.TIMEOUT}
