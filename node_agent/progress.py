"""Training progress, from a running plan to the researcher who asked for the round.

The plan process hands each report to the request's :class:`ProgressForwarder` (see
:func:`node_agent.runner.run_training`), which keeps only the latest one and publishes it as a
:class:`~broker_net.progress_messages.ProgressMessage` at most every ``interval`` seconds, to
the same reply queue and authenticated as the request's reply will be. Progress is best
effort: a report replaces the one not sent yet, so a node holds at most one per request; a
publish that takes longer than :data:`PUBLISH_DEADLINE` is given up; messages are not
persistent, expire after :data:`~broker_net.progress_messages.PROGRESS_EXPIRATION` seconds in
a slow researcher's queue, are never stored for a redelivery and never settle anything. The
training itself never waits for any of it.

:meth:`ProgressForwarding.forwarding` runs a forwarder around a training request's handler
and makes it the handler's :func:`current_progress`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any

import anyio
from pydantic import ValidationError

from broker_net.errors import BrokerNetError
from broker_net.frames import IncomingFrame, frame
from broker_net.messages import TrainRequest
from broker_net.progress_messages import PROGRESS_EXPIRATION, ProgressMessage
from node_agent.plan_process import ProgressCallback
from node_agent.replier import ReplySender
from training_plans.progress import progress_values

logger = logging.getLogger(__name__)

PROGRESS_INTERVAL = 0.5
"""Seconds between two progress messages of one request, by default (the node's
``progress_interval`` setting)."""
PUBLISH_DEADLINE = 2.0
"""Seconds a progress message may take to publish before it is given up."""

_current: ContextVar[ProgressForwarder | None] = ContextVar("progress_forwarder", default=None)


def current_progress() -> ProgressCallback | None:
    """Where the running request's handler sends its plan's progress; ``None`` when the
    request's progress goes nowhere."""
    forwarder = _current.get()
    return None if forwarder is None else forwarder.offer


class ProgressForwarder:
    """One running request's progress: the latest report kept, sent now and then.

    Args:
        replier: publishes with the node's transport, topology and keys.
        request: the running request.
        reply_to: the reply queue of its researcher.
        recipient: its researcher (the envelope's recipient).
        interval: seconds between two messages.
    """

    def __init__(
        self, replier: ReplySender, request: TrainRequest, reply_to: str, recipient: str,
        interval: float,
    ) -> None:  # fmt: skip
        self.replier = replier
        self.request = request
        self.reply_to = reply_to
        self.recipient = recipient
        self.interval = interval
        self.sent = 0
        self._lock = threading.Lock()
        self._pending: dict[str, Any] | None = None
        self._closed = anyio.Event()

    def offer(self, values: dict[str, Any]) -> None:
        """Keep ``values`` as the latest report (from any thread; returns at once)."""
        with self._lock:
            self._pending = values

    def _take(self) -> dict[str, Any] | None:
        with self._lock:
            values, self._pending = self._pending, None
        return values

    def close(self) -> None:
        """Have :meth:`run` send the last report kept and end."""
        self._closed.set()

    async def run(self) -> None:
        """Send the latest report every ``interval`` seconds until :meth:`close`, then the
        last one; never raises."""
        while not self._closed.is_set():
            with anyio.move_on_after(self.interval):
                await self._closed.wait()
            await self.send_pending()
        await self.send_pending()  # what came while the last one went out

    async def send_pending(self) -> None:
        """Publish the report kept, if any, within :data:`PUBLISH_DEADLINE`; failures are
        logged and the report is dropped."""
        values = self._take()
        if values is None:
            return
        request = self.request
        try:
            message = ProgressMessage(
                request_id=request.request_id, researcher_id=request.researcher_id,
                node_id=self.replier.node_id, node_name=self.replier.node_name or "",
                experiment_id=request.experiment_id, round=request.round, sequence=self.sent,
                values=progress_values(values),
            )  # fmt: skip
            header = self.replier.header(message, request.request_id, recipient=self.recipient)
            outgoing = frame(
                header, message, authenticator=self.replier.authenticator(self.recipient),
                expiration=PROGRESS_EXPIRATION, persistent=False,
            )  # fmt: skip
            self.sent += 1
            exchange = self.replier.topology.replies_exchange.name
            with anyio.move_on_after(PUBLISH_DEADLINE) as deadline:
                await self.replier.transport.publish(exchange, self.reply_to, outgoing)
            if deadline.cancelled_caught:
                logger.debug(
                    "progress of %s dropped: the publish took too long", request.request_id
                )
        except (BrokerNetError, ValidationError, ValueError) as exc:
            logger.debug("progress of %s dropped: %s", request.request_id, exc)
        except Exception:  # progress is best effort: it must never end the training
            logger.warning("progress of %s dropped", request.request_id, exc_info=True)


class ProgressForwarding:
    """The node's progress forwarders: one around each training request's handler.

    Args:
        replier: the node's reply sender (transport, topology, keys, node id).
        interval: seconds between two progress messages of one request; 0 sends none (the
            plans' reports then go nowhere).
    """

    def __init__(self, replier: ReplySender, interval: float = PROGRESS_INTERVAL) -> None:
        self.replier = replier
        self.interval = interval

    @asynccontextmanager
    async def forwarding(self, message: Any, incoming: IncomingFrame) -> AsyncIterator[None]:
        """Run a forwarder for ``message`` while the block runs, when it is a training request
        with a reply address. When the block ends normally, the forwarder's last report is
        sent (within :data:`PUBLISH_DEADLINE`) before the block's caller goes on; when it
        fails or is cancelled, the forwarder stops at once."""
        reply_to = None
        if isinstance(message, TrainRequest) and self.interval > 0:
            reply_to = self.replier.address(incoming.delivery, incoming.header)
        if not reply_to:
            yield
            return
        forwarder = ProgressForwarder(
            self.replier, message, reply_to, incoming.header.sender_id, self.interval
        )
        token = _current.set(forwarder)
        failure: Exception | None = None
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(forwarder.run)
                try:
                    yield
                except Exception as exc:  # raised as is below, not in an exception group
                    failure = exc
                    group.cancel_scope.cancel()
                else:
                    forwarder.close()
        finally:
            _current.reset(token)
        if failure is not None:
            raise failure
