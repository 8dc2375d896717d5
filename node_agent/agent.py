"""NodeAgent: the daemon a data holder runs, wiring its parts in one task group.

- :mod:`node_agent.intake` consumes the node's queue and hands deliveries to workers;
- :mod:`node_agent.dispatch` opens each delivery, runs its handler once, has it answered;
- :mod:`node_agent.refusals` answers what cannot be run;
- :mod:`node_agent.replier` publishes, stores and settles (a request is acked only once its
  reply is confirmed, so a crash leads to redelivery, never to loss);
- :mod:`node_agent.heartbeats` tells researchers the node is online.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any, Self

import anyio
from anyio.abc import TaskGroup

from broker_net.crypto.authentication import Security
from broker_net.messages import Heartbeat
from broker_net.transport import Transport
from node_agent.context import NodeContext
from node_agent.dispatch import Dispatcher
from node_agent.handlers import HANDLERS, Handler
from node_agent.heartbeats import Heartbeats
from node_agent.intake import Intake
from node_agent.replier import ReplySender
from node_agent.replies import ReplyStore
from node_agent.settings import NodeSettings

logger = logging.getLogger(__name__)


class NodeAgent:
    """The daemon a data holder runs.

    Use it as an async context manager and call :meth:`serve` (or :meth:`stop` from elsewhere)::

        async with AmqpTransport(url) as transport, NodeAgent(settings, transport) as agent:
            await agent.serve()

    Args:
        settings: the node's configuration.
        transport: a connected transport.
        handlers: handler per request type (defaults to the built-in ones).
        shutdown_grace: seconds in-flight requests may take to finish when stopping; requests
            still running after that are given back to the queue.
        security: this node's identity and trusted researchers; loaded from the data folder
            when omitted and ``settings.security`` is on.
    """

    def __init__(
        self,
        settings: NodeSettings,
        transport: Transport,
        *,
        handlers: dict[str, Handler] | None = None,
        shutdown_grace: float = 30.0,
        security: Security | None = None,
    ) -> None:
        self.settings = settings
        self.security = security
        self.transport = transport
        self.topology = settings.topology
        self.handlers = dict(HANDLERS if handlers is None else handlers)
        self.shutdown_grace = shutdown_grace
        self.context: NodeContext | None = None
        self.replies: ReplyStore | None = None
        self.counters: dict[str, int] = {
            "handled": 0, "errors": 0, "duplicates": 0, "cancelled": 0,
        }  # fmt: skip
        self.intake: Intake | None = None
        self._heartbeats: Heartbeats | None = None
        self._stopping = anyio.Event()
        self._task_group: TaskGroup | None = None

    @property
    def node_id(self) -> str:
        """This node's id."""
        return self.settings.node_id

    async def __aenter__(self) -> Self:
        settings = self.settings
        if self.security is None and settings.security:
            self.security = await anyio.to_thread.run_sync(
                partial(
                    Security.load, settings.identity_dir, self.node_id, "node",
                    settings.trust_path, window=settings.message_window,
                )
            )  # fmt: skip
        self.context = context = await anyio.to_thread.run_sync(
            partial(NodeContext.open, settings, security=self.security)
        )
        self.replies = ReplyStore(settings.data_dir / "replies.sqlite")
        replier = ReplySender(
            self.node_id, settings.display_name, self.transport, self.topology, self.security,
            self.replies, self.counters, stored_reply_limit=settings.stored_reply_limit,
        )  # fmt: skip
        dispatcher = Dispatcher(
            self.handlers, context, replier, self.security,
            max_message_size=settings.max_message_size,
            heavy_concurrency=settings.heavy_concurrency, counters=self.counters,
            progress_interval=settings.progress_interval,
        )  # fmt: skip
        self.intake = Intake(
            self.transport, self.topology.node_queue(self.node_id), dispatcher.handle_safely,
            prefetch=settings.prefetch, stopping=self._stopping,
            shutdown_grace=self.shutdown_grace,
        )  # fmt: skip
        self._heartbeats = Heartbeats(
            self.node_id, settings.display_name, settings.heartbeat_interval, self.transport,
            self.topology, replier.authenticator("*"), context.dataset_ids,
        )  # fmt: skip
        await self.transport.declare(*self.topology.node_declarations(self.node_id))
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._heartbeats.run, self._stopping)
        self._task_group.start_soon(self._receive, self.intake)
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        self.stop()
        assert self._task_group is not None
        try:
            await self._task_group.__aexit__(*exc_info)
        finally:
            if self.replies is not None:
                self.replies.close()
            if self.context is not None:
                self.context.close()

    async def wait_ready(self) -> None:
        """Wait until the agent consumes its queue."""
        assert self.intake is not None, "enter the agent first"
        await self.intake.ready.wait()

    async def serve(self) -> None:
        """Run until :meth:`stop` is called."""
        await self._stopping.wait()

    def stop(self) -> None:
        """Stop taking requests; in-flight ones finish within the shutdown grace."""
        self._stopping.set()

    def heartbeat(self, *, stopping: bool = False) -> Heartbeat:
        """The heartbeat this node publishes now."""
        assert self._heartbeats is not None, "enter the agent first"
        return self._heartbeats.heartbeat(stopping=stopping)

    async def _receive(self, intake: Intake) -> None:
        await intake.run()
        # The queue is no longer consumed: heartbeats stop too.
        assert self._task_group is not None
        self._task_group.cancel_scope.cancel()
