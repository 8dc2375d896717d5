"""Cancels on the node, over the in-memory transport: a running or queued request is stopped
and answered CANCELLED, its lane freed; finished, unknown and foreign targets are harmless."""

from __future__ import annotations

import time
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import pytest

from broker_net.codes import ErrorCode
from broker_net.memory import MemoryBroker, MemoryTransport
from broker_net.messages import CancelReply, CancelRequest, ErrorMessage, FARequest
from broker_net.topology import Topology
from node_agent.plan_workers import PlanWorkers
from researcher.requests.policies import DiscardOnTimeout
from researcher.requests.router import Requests
from tests.node_agent.sandbox_support import policy
from tests.node_agent.test_agent import FakeAnalytics, _agent, _fa
from tests.node_agent.test_plan_workers import alive, run

pytestmark = pytest.mark.anyio
TOPOLOGY = Topology("agent")


async def _cancel(requests: Requests, target: str) -> CancelReply:
    message = CancelRequest(researcher_id=requests.researcher_id, target_request_id=target)
    fed = await requests.request(message, ["n1"], [DiscardOnTimeout(5)])
    reply = fed.replies()["n1"]
    assert isinstance(reply, CancelReply)
    return reply


async def _answer(requests: Requests, message: FARequest) -> object:
    fed = await requests.request(message, ["n1"], [DiscardOnTimeout(10)])
    return (fed.replies() or fed.errors())["n1"]


async def test_a_running_and_a_queued_request_are_stopped_and_answered_cancelled(
    memory_broker: MemoryBroker, tmp_path: Path
) -> None:
    handler = FakeAnalytics(delay=60.0)
    async with AsyncExitStack() as stack:
        agent = await _agent(stack, memory_broker, tmp_path, handler)
        await agent.wait_ready()
        transport = await stack.enter_async_context(MemoryTransport(memory_broker))
        requests = await stack.enter_async_context(Requests(transport, "alice", topology=TOPOLOGY))
        answers: dict[str, object] = {}
        running, queued = _fa(), _fa()  # heavy_concurrency 1: the second waits for its lane

        async def ask(message: FARequest) -> None:
            answers[message.request_id] = await _answer(requests, message)

        async with anyio.create_task_group() as group:
            group.start_soon(ask, running)
            await anyio.sleep(0.2)
            group.start_soon(ask, queued)
            await anyio.sleep(0.2)
            started = time.monotonic()
            reply = await _cancel(requests, queued.request_id)
            assert (reply.cancelled, reply.state) == (True, "queued")
            reply = await _cancel(requests, running.request_id)
            assert (reply.cancelled, reply.state) == (True, "running")
            assert time.monotonic() - started < 1.0
        for message in (running, queued):
            answer = answers[message.request_id]
            assert isinstance(answer, ErrorMessage) and answer.code is ErrorCode.CANCELLED
        assert agent.counters["cancelled"] == 2
        # The lane is free: the next request runs at once.
        handler.delay = 0.0
        assert not isinstance(await _answer(requests, _fa()), ErrorMessage)


async def test_finished_unknown_and_foreign_targets_are_harmless(
    memory_broker: MemoryBroker, tmp_path: Path
) -> None:
    handler = FakeAnalytics(delay=0.5)
    async with AsyncExitStack() as stack:
        agent = await _agent(stack, memory_broker, tmp_path, handler)
        await agent.wait_ready()
        transport = await stack.enter_async_context(MemoryTransport(memory_broker))
        alice = await stack.enter_async_context(Requests(transport, "alice", topology=TOPOLOGY))
        mallory = await stack.enter_async_context(Requests(transport, "mallory", topology=TOPOLOGY))
        done = _fa()
        assert not isinstance(await _answer(alice, done), ErrorMessage)
        reply = await _cancel(alice, done.request_id)
        assert (reply.cancelled, reply.state) == (False, "finished")

        victim = _fa()
        answers: list[object] = []

        async def ask() -> None:
            answers.append(await _answer(alice, victim))

        async with anyio.create_task_group() as group:
            group.start_soon(ask)
            await anyio.sleep(0.2)
            reply = await _cancel(mallory, victim.request_id)
            assert (reply.cancelled, reply.state) == (False, "unknown")
        assert not isinstance(answers[0], ErrorMessage)

        # A cancel that comes first: the request is answered CANCELLED without running.
        early = _fa()
        reply = await _cancel(alice, early.request_id)
        assert (reply.cancelled, reply.state) == (False, "unknown")
        runs = handler.runs
        answer = await _answer(alice, early)
        assert isinstance(answer, ErrorMessage) and answer.code is ErrorCode.CANCELLED
        assert handler.runs == runs
        assert agent.counters["cancelled"] == 1


async def test_a_cancelled_round_kills_its_warm_worker_which_is_never_reused() -> None:
    workers = PlanWorkers(policy(), size=2)
    try:
        assert (await run(workers, "e"))["train_rounds"] == 1
        [warm] = workers.workers()
        with anyio.move_on_after(1.5):  # what a cancel does to the handler running the round
            await run(workers, "e", sleep=60)
        started = time.monotonic()
        while alive(warm.pid) and time.monotonic() - started < 1.0:
            await anyio.sleep(0.01)
        assert workers.workers() == [] and not alive(warm.pid)
        assert (await run(workers, "e"))["train_rounds"] == 1  # a fresh process
        assert [worker.pid for worker in workers.workers()] != [warm.pid]
    finally:
        workers.close()
