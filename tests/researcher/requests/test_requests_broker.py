"""The request layer against the real broker, with node agents as separate processes."""

from __future__ import annotations

import time
from pathlib import Path

import aio_pika
import anyio
import pytest

from broker_net.codec import decode_message
from broker_net.codes import ErrorCode
from broker_net.envelope import EnvelopeHeader, seal, unseal
from broker_net.messages import ErrorMessage, PingRequest
from broker_net.topology import Topology
from researcher.requests.policies import (
    DiscardOnTimeout,
    RequestStatus,
    StopOnDisconnect,
    StopOnError,
    StopOnTimeout,
)
from researcher.requests.router import Requests
from tests.support.processes import AgentProcesses

pytestmark = [pytest.mark.rabbitmq, pytest.mark.anyio]


def _ping() -> PingRequest:
    return PingRequest(researcher_id="alice")


async def test_ten_nodes_answer(agents: AgentProcesses, requests: Requests) -> None:
    nodes = [f"node-{i}" for i in range(10)]
    await agents.astart_all(nodes)

    fed = await requests.request(_ping(), nodes, [DiscardOnTimeout(10)])

    assert fed.status() == dict.fromkeys(nodes, RequestStatus.SUCCESS)
    assert sorted(fed.replies()) == nodes
    assert all(reply.request_id == fed.request_id for reply in fed.replies().values())
    assert fed.policy_report() is None


async def test_discard_on_timeout_ends_the_wait_and_logs_the_late_reply(
    agents: AgentProcesses, requests: Requests
) -> None:
    await agents.astart("fast")
    await agents.astart("slow", "--delay", "30")

    started = time.monotonic()
    fed = await requests.request(_ping(), ["fast", "slow"], [DiscardOnTimeout(1)])
    waited = time.monotonic() - started

    # The timeout ends the wait: not before it, and long before the slow node's answer.
    assert 1 <= waited <= 1 + 5, f"the wait took {waited:.1f} s"
    assert fed.status() == {"fast": RequestStatus.SUCCESS, "slow": RequestStatus.TIMEOUT}
    assert list(fed.replies()) == ["fast"]
    with anyio.fail_after(45):
        while not any(late.request_id == fed.request_id for late in requests.late_replies):
            await anyio.sleep(0.2)
    late = [entry for entry in requests.late_replies if entry.request_id == fed.request_id]
    assert [entry.node_id for entry in late] == ["slow"]
    assert "slow" not in fed.replies()


async def test_stop_on_timeout_names_the_silent_node(
    agents: AgentProcesses, requests: Requests
) -> None:
    await agents.astart("fast")
    await agents.astart("silent", "--delay", "30")
    await agents.astart("slowish", "--delay", "20")

    started = time.monotonic()
    fed = await requests.request(_ping(), ["fast", "silent", "slowish"], [StopOnTimeout(0.8)])
    waited = time.monotonic() - started

    assert 0.8 <= waited <= 0.8 + 5, f"the wait took {waited:.1f} s"
    status = fed.status()
    assert status["fast"] is RequestStatus.SUCCESS
    report = fed.policy_report()
    assert report is not None
    assert report.policy == "StopOnTimeout"
    # Each node's clock runs from its own send: the one that stopped the request timed out;
    # the other timed out too, or was stopped if it was sent a moment later.
    assert status[report.node_id] is RequestStatus.TIMEOUT
    assert {status["silent"], status["slowish"]} <= {RequestStatus.TIMEOUT, RequestStatus.STOPPED}


async def test_stop_on_timeout_marks_nodes_not_yet_late_as_stopped(
    agents: AgentProcesses, requests: Requests
) -> None:
    await agents.astart("silent", "--delay", "30")
    await agents.astart("other", "--delay", "30")

    fed = await requests.request(
        _ping(), ["silent", "other"], [StopOnTimeout(0.5, nodes=["silent"])]
    )

    assert fed.status() == {"silent": RequestStatus.TIMEOUT, "other": RequestStatus.STOPPED}
    report = fed.policy_report()
    assert report is not None and (report.policy, report.node_id) == ("StopOnTimeout", "silent")


async def test_stop_on_error(agents: AgentProcesses, requests: Requests) -> None:
    await agents.astart("broken", "--fail")
    await agents.astart("slow", "--delay", "90")

    started = time.monotonic()
    fed = await requests.request(_ping(), ["broken", "slow"], [StopOnError(), StopOnTimeout(60)])
    waited = time.monotonic() - started

    # The error stops the request, long before the timeout would.
    assert waited < 30, f"the wait took {waited:.1f} s"
    assert fed.status() == {"broken": RequestStatus.ERROR, "slow": RequestStatus.STOPPED}
    error = fed.errors()["broken"]
    assert error.request_id == fed.request_id
    assert error.code is ErrorCode.NODE_ERROR
    report = fed.policy_report()
    assert report is not None and (report.policy, report.node_id) == ("StopOnError", "broken")


async def test_stop_on_disconnect_when_a_node_process_is_killed(
    agents: AgentProcesses, requests: Requests
) -> None:
    await agents.astart("stays", "--delay", "90")
    await agents.astart("dies", "--delay", "90")

    async def kill_soon() -> None:
        await anyio.sleep(0.5)
        await agents.akill("dies")

    started = time.monotonic()
    async with anyio.create_task_group() as group:
        group.start_soon(kill_soon)
        fed = await requests.request(
            _ping(), ["stays", "dies"], [StopOnDisconnect(1.0), StopOnTimeout(60)]
        )
    elapsed = time.monotonic() - started

    # Stopped once the node had been gone for 1 s, long before the timeout would.
    assert 0.5 + 1.0 <= elapsed < 30, f"took {elapsed:.1f} s"
    assert fed.status() == {"stays": RequestStatus.STOPPED, "dies": RequestStatus.DISCONNECTED}
    report = fed.policy_report()
    assert report is not None and (report.policy, report.node_id) == ("StopOnDisconnect", "dies")


async def test_per_node_times_differ(agents: AgentProcesses, requests: Requests) -> None:
    delays = {"quick": 0.05, "medium": 2.0, "long": 4.0}
    for node, delay in delays.items():
        await agents.astart(node, "--delay", str(delay))

    fed = await requests.request(_ping(), list(delays), [DiscardOnTimeout(10)])

    timings = fed.timings()
    for node, delay in delays.items():
        timing = timings[node]
        assert timing.processing is not None and timing.round_trip is not None
        assert timing.queue_and_transit is not None
        # Each node's own delay, with room for a busy host (the delays are 2 s apart).
        assert delay <= timing.processing < delay + 1.9
        assert timing.round_trip >= timing.processing
        assert timing.round_trip == pytest.approx(timing.processing + timing.queue_and_transit)
    assert timings["quick"].round_trip < timings["medium"].round_trip < timings["long"].round_trip


async def test_cancelling_the_awaiting_task_leaves_nothing_behind(
    agents: AgentProcesses, requests: Requests, topology: Topology
) -> None:
    await agents.astart("slow", "--delay", "30")

    with anyio.move_on_after(0.5) as scope:
        await requests.request(_ping(), ["slow"], [DiscardOnTimeout(20)])
    assert scope.cancelled_caught

    assert requests._pending == {}
    reply_queue = topology.researcher_queue("alice").name
    assert await requests.transport.consumer_count(reply_queue) == 1
    await agents.astart("fast")
    fed = await requests.request(_ping(), ["fast"], [DiscardOnTimeout(5)])
    assert fed.status() == {"fast": RequestStatus.SUCCESS}


async def test_a_duplicate_delivery_is_answered_but_not_run_again(
    agents: AgentProcesses, requests: Requests, topology: Topology, tmp_path: Path
) -> None:
    runs = tmp_path / "runs.txt"
    await agents.astart("counted", "--runs-file", str(runs))
    message = _ping()
    header = EnvelopeHeader.for_message(
        message, sender_id="alice", sender_role="researcher", recipient="counted"
    )
    body = seal(header, message)
    reply_queue = topology.researcher_queue("alice").name

    async with await aio_pika.connect(requests.transport.url) as connection:  # type: ignore[attr-defined]
        channel = await connection.channel()
        exchange = await channel.get_exchange(topology.requests_exchange.name)
        for _ in range(2):
            await exchange.publish(
                aio_pika.Message(
                    body, correlation_id=message.request_id, reply_to=reply_queue,
                    message_id=header.message_id, type=message.type,
                ),
                routing_key="counted",
            )  # fmt: skip

    with anyio.fail_after(10):
        while len(requests.parked_replies().get(message.request_id, [])) < 2:
            await anyio.sleep(0.05)
    assert runs.read_text().split() == [message.request_id]


async def test_malformed_messages_are_answered_with_their_request_id(
    agents: AgentProcesses, requests: Requests, topology: Topology, amqp_url: str
) -> None:
    await agents.astart("target")

    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel()
        replies = await channel.declare_queue(exclusive=True)
        await replies.bind(topology.replies_exchange.name, replies.name)
        exchange = await channel.get_exchange(topology.requests_exchange.name)

        garbage = aio_pika.Message(
            b"\x93not an envelope", correlation_id="request-garbage", reply_to=replies.name
        )
        await exchange.publish(garbage, routing_key="target")

        bad = {"type": "ping_request", "request_id": "request-invalid"}  # no researcher_id
        header = EnvelopeHeader(
            message_id="msg-1", sender_id="mallory", sender_role="researcher",
            recipient="target", message_type="ping_request", request_id="request-invalid",
        )  # fmt: skip
        await exchange.publish(
            aio_pika.Message(seal(header, bad), correlation_id="request-invalid",
                             reply_to=replies.name),
            routing_key="target",
        )  # fmt: skip

        unknown = {"type": "launch_missiles", "request_id": "request-unknown"}
        header = EnvelopeHeader(
            message_id="msg-2", sender_id="mallory", sender_role="researcher",
            recipient="target", message_type="launch_missiles", request_id="request-unknown",
        )  # fmt: skip
        await exchange.publish(
            aio_pika.Message(seal(header, unknown), reply_to=replies.name),
            routing_key="target",
        )

        errors: dict[str, ErrorMessage] = {}
        with anyio.fail_after(10):
            async with replies.iterator() as incoming:
                async for delivery in incoming:
                    await delivery.ack()
                    message = decode_message(unseal(delivery.body).body)
                    assert isinstance(message, ErrorMessage)
                    assert message.request_id is not None
                    errors[message.request_id] = message
                    if len(errors) == 3:
                        break

    assert errors["request-garbage"].code is ErrorCode.MALFORMED_MESSAGE
    assert errors["request-invalid"].code is ErrorCode.INVALID_MESSAGE
    assert errors["request-unknown"].code is ErrorCode.INVALID_MESSAGE
    assert all(error.node_id == "target" for error in errors.values())

    fed = await requests.request(_ping(), ["target"], [DiscardOnTimeout(5)])
    assert fed.status() == {"target": RequestStatus.SUCCESS}


async def test_a_node_without_a_queue_is_reported_at_once(requests: Requests) -> None:
    started = time.monotonic()
    fed = await requests.request(_ping(), ["never-started"], [DiscardOnTimeout(60)])
    waited = time.monotonic() - started
    # At once: long before the timeout would end the wait.
    assert waited < 30, f"the wait took {waited:.1f} s"
    assert fed.status() == {"never-started": RequestStatus.DISCONNECTED}
    assert "no request queue" in fed.reasons()["never-started"]


async def test_presence_lists_nodes_and_ping_defaults_to_them(
    agents: AgentProcesses, requests: Requests
) -> None:
    await agents.astart("a")
    await agents.astart("b")
    await requests.wait_for_nodes(["a", "b"], timeout=10)

    listed = {presence.node_id for presence in await requests.list_nodes()}
    assert {"a", "b"} <= listed
    fed = await requests.ping(timeout=5)
    assert set(fed.replies()) == {"a", "b"}

    # In a thread: the event loop must go on reading heartbeats while the agents stop.
    await agents.astop_all()
    with anyio.fail_after(10):
        while requests.presence.online_ids():
            await anyio.sleep(0.1)
    presence = requests.presence.get("a")
    assert presence is not None and presence.stopping


async def test_sigterm_lets_in_flight_work_finish(
    agents: AgentProcesses, requests: Requests
) -> None:
    process = await agents.astart("graceful", "--delay", "0.6")

    async def terminate_soon() -> None:
        await anyio.sleep(0.2)
        process.terminate()

    async with anyio.create_task_group() as group:
        group.start_soon(terminate_soon)
        fed = await requests.request(_ping(), ["graceful"], [DiscardOnTimeout(10)])

    assert fed.status() == {"graceful": RequestStatus.SUCCESS}
    assert process.wait(timeout=10) == 0


async def test_sigterm_gives_unfinished_work_back_to_the_queue(
    agents: AgentProcesses, requests: Requests
) -> None:
    await agents.astart("requeue", "--delay", "3")

    async def replace_the_agent() -> None:
        await anyio.sleep(0.3)
        # The test agent's grace is 1 s, shorter than the work.
        await agents.astop("requeue")
        await agents.astart("requeue", "--delay", "0.1")

    async with anyio.create_task_group() as group:
        group.start_soon(replace_the_agent)
        fed = await requests.request(_ping(), ["requeue"], [DiscardOnTimeout(60)])

    assert fed.status() == {"requeue": RequestStatus.SUCCESS}
    # The second agent answered (the first would have taken 3 s).
    timing = fed.timings()["requeue"]
    assert timing.processing is not None and timing.processing < 3
