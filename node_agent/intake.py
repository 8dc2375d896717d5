"""Intake: consume the node's queue with workers that take deliveries straight from it.

Workers are tasks of their own that read the consumer's stream themselves, each handling one
delivery after the other: a delivery goes from the broker's callback to the worker that
answers it with one wake-up, not two (a reader task handing it on to a worker through a second
queue cost a scheduling hop per message). A worker that takes a delivery while no other worker
waits starts one more first, so one always waits for the next delivery (a ping is answered
while a node trains) and there are as many workers as requests were ever in flight at once,
plus that one; sequential requests reuse the same workers. A task per delivery would be
simpler, but starting an anyio task costs more than answering a ping.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
from anyio.abc import TaskGroup

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
        self._waiting: set[anyio.CancelScope] = set()
        """The receiving scope of each worker waiting for a delivery."""

    @property
    def idle_workers(self) -> int:
        """Workers waiting for a delivery."""
        return len(self._waiting)

    async def run(self) -> None:
        """Consume until stopped; return once every worker has finished or been cancelled."""
        async with self.transport.consume(self.queue, prefetch=self.prefetch) as deliveries:
            with anyio.CancelScope() as handlers_scope:
                async with anyio.create_task_group() as handlers:
                    handlers.start_soon(self._work, deliveries, handlers)
                    self.ready.set()
                    logger.info("consuming %s", self.queue.name)
                    await self.stopping.wait()
                    # Waiting workers stop now; busy ones finish what they hold within the
                    # grace period, then stop.
                    for receiving in list(self._waiting):
                        receiving.cancel()
                    handlers_scope.deadline = anyio.current_time() + self.shutdown_grace
            if handlers_scope.cancelled_caught:
                logger.warning("requests still running after the grace period go back to the queue")
            # Deliveries prefetched but never handed to a worker go back to the queue.
            while True:
                try:
                    delivery = deliveries.receive_nowait()  # type: ignore[attr-defined]
                except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                    break
                await settle_quietly(delivery.reject(requeue=True))

    async def _work(self, deliveries: AsyncIterator[Delivery], workers: TaskGroup) -> None:
        """A worker: take deliveries from the stream and handle them, one at a time."""
        waiting = self._waiting
        with anyio.CancelScope() as receiving:
            while not self.stopping.is_set():
                waiting.add(receiving)
                try:
                    delivery = await deliveries.__anext__()
                except StopAsyncIteration:
                    self.stopping.set()  # the consumer is gone: the agent stops
                    return
                finally:
                    waiting.discard(receiving)
                if not waiting:
                    workers.start_soon(self._work, deliveries, workers)
                await self.handle(delivery)
