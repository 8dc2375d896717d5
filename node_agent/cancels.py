"""Cancellation on the node: the requests being handled, and the cancels that came first.

The dispatcher runs each request's handler inside the cancel scope of a :class:`Work`, which
:class:`Cancellations` keeps by request id while it runs. A ``cancel_request`` from the same
sender cancels that scope: the handler stops where it awaits (a plan's process is killed by
:mod:`node_agent.plan_workers`, a warm worker is never reused), its lane is released, and the
dispatcher answers the request ``CANCELLED``. A cancel for a request the node does not know is
remembered (a bounded number of them), so that request is answered ``CANCELLED`` without
running if it arrives later from the same sender.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio

from broker_net.messages import CancelReply, CancelRequest, CancelState
from node_agent.context import NodeContext

logger = logging.getLogger(__name__)

REMEMBERED_CANCELS = 4096
"""Cancels of requests not seen yet that a node keeps, the oldest forgotten first."""


@dataclass(eq=False)
class Work:
    """One request being handled: whom it came from, and how to stop it."""

    request_id: str
    sender: str
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    done: anyio.Event | None = None
    """Set once the handler is over; made only when a cancel waits for it."""
    over: bool = False
    """The handler is over."""
    queued: bool = True
    """Still waiting for its lane (heavy requests); false once its handler runs."""
    cancel_request_id: str | None = None

    @property
    def cancelled(self) -> bool:
        """True when a cancel stopped it."""
        return self.scope.cancelled_caught


class Cancellations:
    """The node's running requests by id, and the cancels that came before their request.

    Args:
        wait: seconds a cancel waits for the work it stops to be over before it is answered.
        remember: cancels of unknown requests kept.
    """

    def __init__(self, *, wait: float = 2.0, remember: int = REMEMBERED_CANCELS) -> None:
        self.wait = wait
        self.remember = remember
        self._running: dict[str, Work] = {}
        self._early: OrderedDict[tuple[str, str], None] = OrderedDict()  # (target, sender)

    def start(self, request_id: str, sender: str) -> Work:
        """Track the request from now on; call :meth:`end` when it is over."""
        work = self._running[request_id] = Work(request_id, sender)
        return work

    def end(self, work: Work) -> None:
        """The request's handler is over (answered, failed or cancelled)."""
        if self._running.get(work.request_id) is work:
            del self._running[work.request_id]
        work.over = True
        if work.done is not None:
            work.done.set()

    def cancelled_early(self, request_id: str, sender: str) -> bool:
        """True (once) when ``sender`` cancelled this request before it arrived."""
        if (request_id, sender) not in self._early:
            return False
        del self._early[request_id, sender]
        return True

    async def answer(
        self,
        request: CancelRequest,
        sender: str,
        context: NodeContext,
        answered: Callable[[str], Awaitable[bool]],
    ) -> CancelReply:
        """Stop the work ``request`` names if ``sender`` sent it, and say what it was.

        Args:
            sender: the cancel's authenticated sender.
            answered: whether the node answered a request id before (its stored replies).
        """
        target = request.target_request_id
        cancelled = False
        state: CancelState = "unknown"
        work = self._running.get(target)
        if work is None and await answered(target):
            state = "finished"
        else:
            work = self._running.get(target)  # it may have started while the store was read
            if work is None:
                self._remember(target, sender)
            elif work.sender != sender:
                logger.warning("refusing a cancel of request %s from %s, who did not send it",
                               target, sender)  # fmt: skip
            else:
                state = "queued" if work.queued else "running"
                cancelled = await self._stop(work, request.request_id)
                if not cancelled:
                    state = "finished"
        return CancelReply(
            request_id=request.request_id,
            researcher_id=request.researcher_id,
            node_id=context.node_id,
            node_name=context.node_name,
            target_request_id=target,
            cancelled=cancelled,
            state=state,
        )

    async def _stop(self, work: Work, cancel_request_id: str) -> bool:
        started = anyio.current_time()
        work.cancel_request_id = cancel_request_id
        work.scope.cancel()
        if not work.over:
            done = work.done = work.done or anyio.Event()
            with anyio.move_on_after(self.wait):
                await done.wait()
        took = anyio.current_time() - started
        if not work.over:
            logger.warning("request %s is still stopping %.1f s after its cancel",
                           work.request_id, took)  # fmt: skip
            return True
        outcome = "stopped" if work.cancelled else "it had finished"
        logger.info("request %s cancelled by %s in %.3f s: %s", work.request_id,
                    cancel_request_id, took, outcome)  # fmt: skip
        return work.cancelled

    def _remember(self, target: str, sender: str) -> None:
        self._early[target, sender] = None
        self._early.move_to_end((target, sender))
        while len(self._early) > self.remember:
            self._early.popitem(last=False)
