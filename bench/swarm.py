"""Many node agents in one process, sharing a few broker connections.

Benchmarks and scale tests need hundreds of nodes on a two-core machine: a process per node
would spend the memory and the CPU on interpreters, not on the network. Here every
:class:`NodeAgent` runs as a task of one event loop and the agents share ``connections``
:class:`AmqpTransport` connections (each agent still has its own consumer channel and queue, as
it would in its own process)::

    async with swarm(url, namespace, ["n1", "n2"], tmp_dir) as agents:
        ...  # every agent consumes its queue here
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import anyio

from broker_net.amqp import AmqpTransport
from broker_net.chunking import Chunking
from broker_net.messages import TrainReply, TrainRequest
from node_agent.agent import NodeAgent
from node_agent.context import NodeContext
from node_agent.handlers import HANDLERS, Handler
from node_agent.settings import NodeSettings


async def echo_train(request: TrainRequest, context: NodeContext) -> TrainReply:
    """A ``train_request`` handler that sends the parameters it got straight back."""
    return TrainReply(
        request_id=request.request_id,
        researcher_id=request.researcher_id,
        node_id=context.node_id,
        experiment_id=request.experiment_id,
        round=request.round,
        success=True,
        dataset_id=request.dataset_id,
        params=request.params,
        sample_size=1,
    )


ECHO_HANDLERS: dict[str, Handler] = {**HANDLERS, "train_request": echo_train}
"""The built-in handlers, with :func:`echo_train` for training requests."""


@asynccontextmanager
async def swarm(
    url: str,
    namespace: str,
    node_ids: Sequence[str],
    base_dir: Path,
    *,
    connections: int = 2,
    handlers: Mapping[str, Handler] | None = None,
    security: bool = False,
    chunking: Chunking | None = None,
    heartbeat_interval: float = 5.0,
) -> AsyncIterator[list[NodeAgent]]:
    """Run one :class:`NodeAgent` per node id until the block exits.

    Args:
        url: the broker's AMQP URL.
        namespace: the topology namespace the agents use.
        node_ids: one agent per id.
        base_dir: each agent keeps its data in ``base_dir / node_id``.
        connections: broker connections the agents share, round robin.
        handlers: handlers for every agent (default: the built-in ones, echoing training).
        security: authenticate every message; each node then loads its identity and the
            researchers it trusts from its data folder (see
            :func:`broker_net.crypto.introductions.introduce`).
        chunking: the chunking of every connection.
        heartbeat_interval: seconds between each agent's heartbeats.

    Yields:
        The agents, every one of them consuming its queue.
    """
    async with AsyncExitStack() as stack:
        transports = [
            await stack.enter_async_context(
                AmqpTransport(url, connection_name=f"swarm-{index}", chunking=chunking)
            )
            for index in range(connections)
        ]
        agents: list[NodeAgent] = []
        for index, node_id in enumerate(node_ids):
            settings = NodeSettings(
                node_id=node_id,
                namespace=namespace,
                amqp_url=url,
                data_dir=base_dir / node_id,
                heartbeat_interval=heartbeat_interval,
                security=security,
            )
            agents.append(
                NodeAgent(
                    settings,
                    transports[index % connections],
                    handlers=dict(handlers or ECHO_HANDLERS),
                    shutdown_grace=1.0,
                )
            )
        async with anyio.create_task_group() as group:
            async with anyio.create_task_group() as starting:
                for agent in agents:
                    starting.start_soon(group.start, _run, agent)
            try:
                yield agents
            finally:
                for agent in agents:
                    agent.stop()


async def _run(agent: NodeAgent, *, task_status: anyio.abc.TaskStatus[None]) -> None:
    # Each agent enters and leaves its context in a task of its own, as its task group needs.
    async with agent:
        await agent.wait_ready()
        task_status.started()
        await agent.serve()
