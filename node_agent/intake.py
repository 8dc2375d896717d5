"""Intake: consume the node's queue and hand each delivery to a worker.

Workers are tasks of their own that take deliveries one after the other; one more is started
whenever a delivery finds every worker busy, so there are as many as requests were ever in
flight at once (at most the prefetch, give or take chunked transfers). A task per delivery
would be simpler, but starting an anyio task costs more than answering a ping.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio

from broker_net.inbox import Inbox
from broker_net.topology import QueueSpec
from broker_net.transport import Delivery, Transport
from node_agent.replier import settle_quietly

logger = logging.getLogger(__name__)


class Intake:
    """Consumes one queue until ``stopping`` is set, then gives unstarted work back.

    Args:
        transport: a connected transport.
        queue: the queue to consume.
        handle: what a worker does with each delivery; it settles the delivery.
        prefetch: deliveries unsettled at once.
        stopping: set to stop taking deliveries (and set by the intake when it stops).
        shutdown_grace: seconds in-flight deliveries may take to finish once stopping; those
            still running after that are cancelled and go back to the queue.
    """

    def __init__(
        self,
        transport: Transport,
        queue: QueueSpec,
        handle: Callable[[Delivery], Awaitable[None]],
        *,
        prefetch: int,
        stopping: anyio.Event,
        shutdown_grace: float,
    ) -> None:
        self.transport = transport
        self.queue = queue
        self.handle = handle
        self.prefetch = prefetch
        self.stopping = stopping
        self.shutdown_grace = shutdown_grace
        self.ready = anyio.Event()
        self.idle_workers = 0
        """Workers waiting for a delivery (a worker just started counts as idle)."""

    async def run(self) -> None:
        """Consume until stopped; return once every worker has finished or been cancelled."""
        work = Inbox[Delivery]()
        async with self.transport.consume(self.queue, prefetch=self.prefetch) as deliveries:
            with anyio.CancelScope() as handlers_scope:
                async with anyio.create_task_group() as handlers:
                    with anyio.CancelScope() as receiving:
                        handlers.start_soon(_cancel_when_set, self.stopping, receiving)
                        self.ready.set()
                        logger.info("consuming %s", self.queue.name)
                        async for delivery in deliveries:
                            work.put_nowait(delivery)
                            if len(work) > self.idle_workers:
                                self.idle_workers += 1  # counted idle until it takes one
                                handlers.start_soon(self._work, work)
                    self.stopping.set()
                    # Deliveries no worker has started go back to the queue; the workers
                    # finish what they hold within the grace period, then see the end.
                    while len(work):
                        await settle_quietly(work.receive_nowait().reject(requeue=True))
                    work.close()
                    handlers_scope.deadline = anyio.current_time() + self.shutdown_grace
            if handlers_scope.cancelled_caught:
                logger.warning("requests still running after the grace period go back to the queue")
            # Deliveries prefetched but never handed up go back to the queue.
            while True:
                try:
                    delivery = deliveries.receive_nowait()  # type: ignore[attr-defined]
                except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                    break
                await settle_quietly(delivery.reject(requeue=True))

    async def _work(self, work: Inbox[Delivery]) -> None:
        """A worker: handle deliveries one at a time until the inbox is closed."""
        while True:
            try:
                delivery = await work.receive()
            except anyio.EndOfStream:
                self.idle_workers -= 1
                return
            self.idle_workers -= 1
            try:
                await self.handle(delivery)
            finally:
                self.idle_workers += 1


async def _cancel_when_set(event: anyio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()
