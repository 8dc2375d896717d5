"""Monitors: the researcher's callbacks that watch a training's progress on the nodes.

An :class:`~researcher.jobs.experiment.Experiment` (or a
:class:`~researcher.orchestration.fedjob.FedJob`) given ``monitor=`` calls it with every
:class:`~researcher.requests.progress.ProgressEvent` its rounds receive::

    def show(event: ProgressEvent) -> None:
        print(event.node_id, event.round, event.values.get("loss"))

    await Experiment(requests, plan=MyPlan, datasets=..., monitor=show).run()

A monitor may be a plain function or a coroutine function. It runs in a task of its own, one
event after the other, so a slow monitor never holds up the round; when it falls more than
:data:`MONITOR_BUFFER` events behind, the newest are dropped. An exception in it is logged and
the job goes on.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import replace

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from researcher.requests.hooks import RequestHooks
from researcher.requests.progress import ProgressEvent

logger = logging.getLogger(__name__)

MonitorCallback = Callable[[ProgressEvent], Awaitable[None] | None]
"""A monitor: called with each progress event; may be a coroutine function."""

MONITOR_BUFFER = 256
"""Events a monitor may fall behind before new ones are dropped."""
DRAIN_TIMEOUT = 5.0
"""Seconds a monitor gets, once its round is over, for the events still waiting."""


class ProgressMonitor:
    """Runs a monitor in a task of its own while a round runs (:meth:`running`); its
    :meth:`offer` is the round request's ``on_progress`` hook.

    Args:
        callback: the monitor.
        buffer: events it may fall behind before new ones are dropped.
    """

    def __init__(self, callback: MonitorCallback, *, buffer: int = MONITOR_BUFFER) -> None:
        self.callback = callback
        self.buffer = buffer
        self.dropped = 0
        self._send: MemoryObjectSendStream[ProgressEvent] | None = None

    def offer(self, event: ProgressEvent) -> None:
        """Queue ``event`` for the monitor; dropped (and counted) when it is too far behind
        or not running."""
        try:
            if self._send is None:
                raise anyio.ClosedResourceError
            self._send.send_nowait(event)
        except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self.dropped += 1
            logger.debug("progress of %s from %s not given to the monitor: it is behind",
                         event.request_id, event.node_id)  # fmt: skip

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Run the monitor while the block runs; once it ends normally, the monitor gets at
        most :data:`DRAIN_TIMEOUT` seconds for the events still waiting."""
        send, receive = anyio.create_memory_object_stream[ProgressEvent](self.buffer)
        drained = anyio.Event()
        self._send = send
        failure: Exception | None = None
        async with anyio.create_task_group() as group:
            group.start_soon(self._pump, receive, drained)
            try:
                yield
            except Exception as exc:  # raised as is below, not in an exception group
                failure = exc
            finally:
                self._send = None
                send.close()
            if failure is None:
                with anyio.move_on_after(DRAIN_TIMEOUT) as drain:
                    await drained.wait()
                if drain.cancelled_caught:
                    logger.warning("the monitor did not keep up; its last events are dropped")
            group.cancel_scope.cancel()
        if failure is not None:
            raise failure

    async def _pump(
        self, receive: MemoryObjectReceiveStream[ProgressEvent], drained: anyio.Event
    ) -> None:
        try:
            async with receive:
                async for event in receive:
                    await self._call(event)
        finally:
            drained.set()

    async def _call(self, event: ProgressEvent) -> None:
        try:
            result = self.callback(event)
            if inspect.isawaitable(result):
                await result
        except Exception:
            logger.exception("the progress monitor %r failed; the job goes on", self.callback)


def monitored(hooks: RequestHooks | None, monitor: ProgressMonitor | None) -> RequestHooks | None:
    """``hooks`` with ``monitor`` as their ``on_progress`` (unchanged without a monitor)."""
    if monitor is None:
        return hooks
    return replace(hooks or RequestHooks(), on_progress=monitor.offer)


def monitoring(monitor: ProgressMonitor | None) -> AbstractAsyncContextManager[None]:
    """``monitor.running()``, or nothing to do without a monitor."""
    return nullcontext() if monitor is None else monitor.running()
