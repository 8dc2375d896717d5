"""FederatedRequest: one request sent to many nodes, and everything that came back.

::

    async with requests.send(PingRequest(researcher_id="alice"), ["n1", "n2"],
                             [DiscardOnTimeout(2)]) as fed:
        print(fed.replies(), fed.status(), fed.timings())

Entering the request sends it (:class:`~researcher.requests.sending.RequestSender`) and waits
under its policies; the :class:`~researcher.requests.router.Requests` it came from routes each
reply to it while it runs. The two speak through a small interface:

- the request calls :meth:`Requests.track`, :meth:`Requests.deliver_parked` and
  :meth:`Requests.untrack` as it starts, once it is sent, and as it ends;
- the router calls :meth:`FederatedRequest.deliver` with each reply (or ErrorMessage) from a
  node, :meth:`FederatedRequest.progress` when a chunk of one arrives, and hands each progress
  message of a node to its ``progress_relay`` (a
  :class:`~researcher.requests.progress.ProgressRelay`); ``deliver`` returns
  a :class:`~researcher.requests.ledger.Receipt` saying whether the reply came too late.

When the request ends early (a policy stops it, a node times out, or the task awaiting it is
cancelled), it sends a cancel to every node that was sent it and did not answer
(:meth:`FederatedRequest.cancel`), so the nodes stop working on it.

The request calls its :class:`~researcher.requests.hooks.RequestHooks` itself, from the task
that awaits it: ``on_sending`` before anything is published, ``on_sent`` once every publish is
done, ``on_answer`` as each node's answer arrives, ``on_progress`` with the nodes' progress
(:mod:`researcher.requests.progress`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Self, TypeVar

import anyio

from broker_net.errors import TransportError
from broker_net.message_base import new_id
from broker_net.messages import ErrorMessage, RequestMessage
from researcher.requests.hooks import RequestHooks
from researcher.requests.ledger import NodeLedger, NodeTiming, Receipt
from researcher.requests.policies import (
    DiscardOnTimeout,
    Policy,
    RequestStatus,
    Verdict,
    has_timeout,
    longest_wait,
    watches_presence,
)
from researcher.requests.progress import ProgressRelay
from researcher.requests.sending import RequestSender

if TYPE_CHECKING:
    from researcher.requests.router import Requests

logger = logging.getLogger(__name__)
T = TypeVar("T")


class MessagesByNode(dict[str, RequestMessage]):
    """A different request message for each node, keyed by node id."""


@dataclass(frozen=True, slots=True)
class PolicyReport:
    """Which policy stopped a request, because of which node, and why."""

    policy: str
    node_id: str
    reason: str


class FederatedRequest:
    """One request sent to several nodes, and everything that came back.

    Enter it to send and wait (``async with requests.send(...) as fed``); when the block is
    entered, the wait is over and the results below are final.

    Raises:
        ValueError: a node has no message or is named twice; or ``request_id`` or
            ``already_sent`` is given both as an argument and in ``hooks``, differently.
    """

    def __init__(
        self,
        requests: Requests,
        messages: RequestMessage | MessagesByNode,
        nodes: Sequence[str] | None,
        policies: Sequence[Policy],
        expiration: float | None,
        request_id: str | None = None,
        already_sent: Mapping[str, datetime] | None = None,
        hooks: RequestHooks | None = None,
    ) -> None:
        self._hooks = hooks or RequestHooks()
        request_id = _one("request_id", request_id, self._hooks.request_id)
        already_sent = _one("already_sent", already_sent, self._hooks.already_sent)
        self.request_id = request_id or _carried_id(messages)
        if request_id is None and requests.used(self.request_id):
            # The same message object sent again: a new request needs an id of its own.
            self.request_id = new_id("request")
        self._already_sent = dict(already_sent or {})
        self._requests = requests
        targets = list(nodes) if nodes is not None else None
        if targets is None and not isinstance(messages, MessagesByNode):
            targets = requests.presence.online_ids()
        self._messages = _per_node(messages, targets, self.request_id)
        self._policies: list[Policy] = list(policies)
        if not has_timeout(self._policies):
            self._policies.append(DiscardOnTimeout(requests.default_timeout))
        self._expiration = expiration if expiration is not None else longest_wait(self._policies)
        self._nodes = NodeLedger(
            self.request_id, self._messages, keep_answered=self._hooks.on_answer is not None
        )
        self.progress_relay = ProgressRelay(self._nodes, self._hooks.on_progress)
        self._report: PolicyReport | None = None
        self._active = False
        self._cancelled: set[str] = set()
        self._given_up: list[str] = []

    # --- results -------------------------------------------------------------------------------

    @property
    def nodes(self) -> list[str]:
        """The node ids this request was sent to."""
        return list(self._nodes.entries)

    def replies(self) -> dict[str, Any]:
        """Successful replies by node id."""
        entries = self._nodes.entries.items()
        return {n: e.reply for n, e in entries if e.status is RequestStatus.SUCCESS}

    def errors(self) -> dict[str, ErrorMessage]:
        """ErrorMessages by node id."""
        return {n: e.error for n, e in self._nodes.entries.items() if e.error is not None}

    def status(self) -> dict[str, RequestStatus]:
        """Each node's final status."""
        return {node: entry.status for node, entry in self._nodes.entries.items()}

    def reasons(self) -> dict[str, str]:
        """Why each unsuccessful node ended as it did."""
        return {node: entry.reason for node, entry in self._nodes.entries.items() if entry.reason}

    def policy_report(self) -> PolicyReport | None:
        """Which policy stopped the request, or ``None`` when it ran to completion."""
        return self._report

    @property
    def stopped(self) -> bool:
        """True when a policy stopped the request."""
        return self._report is not None

    def timings(self) -> dict[str, NodeTiming]:
        """Round-trip, processing and queue-and-transit time for each node."""
        return {node: entry.timing() for node, entry in self._nodes.entries.items()}

    def sent_at(self) -> dict[str, datetime]:
        """When the request went to each node (wall clock), for resuming it elsewhere."""
        entries = self._nodes.entries.items()
        return {n: e.sent_wall for n, e in entries if e.sent_wall is not None}

    # --- what the router calls -----------------------------------------------------------------

    def deliver(self, node: str, message: Any, arrived: float | None = None) -> Receipt:
        """Hand the request a reply (or an ErrorMessage) from ``node``.

        Args:
            arrived: monotonic arrival time (default: now); a parked reply keeps its own.

        Returns:
            TAKEN when it is the node's answer; LATE when the node's part had already ended
            (the caller keeps it in its late-reply log); IGNORED for a duplicate, a node's
            refusal of a copy it had already accepted, or a node that was not asked.
        """
        return self._nodes.answer(node, message, time.monotonic() if arrived is None else arrived)

    def progress(self, node: str, arrived: float) -> None:
        """A chunk of ``node``'s reply arrived at monotonic ``arrived``: its timeouts now run
        from then (see :mod:`researcher.requests.policies`)."""
        self._nodes.progress(node, arrived)

    # --- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._hooks.on_sending is not None:
            self._hooks.on_sending(self.request_id, self.nodes)
        self._requests.track(self)
        self._active = True
        try:
            await self._send_all()
            if self._hooks.on_sent is not None:
                self._hooks.on_sent(self.request_id, self.sent_at())
            await self._wait()
        except BaseException:
            # Cancelled (a job stopped, a task timed out) or failed: the nodes stop too.
            self._end()
            with anyio.CancelScope(shield=True):
                await self.cancel()
            raise
        self._end()
        if self._report is not None:
            await self.cancel()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._end()

    async def cancel(
        self, nodes: Sequence[str] | None = None, *, timeout: float = 2.0
    ) -> list[str]:
        """Ask the nodes sent this request that did not answer it (or those of ``nodes``) to
        stop working on it, each once; while the request waits, they answer ``CANCELLED``. It
        does so itself when it ends early: a policy stopped it, a node timed out (that node),
        or the task awaiting it was cancelled. Returns the nodes asked."""
        wanted = None if nodes is None else set(nodes)
        targets = [
            node for node in self._nodes.unanswered()
            if node not in self._cancelled and (wanted is None or node in wanted)
        ]  # fmt: skip
        self._cancelled.update(targets)
        return await self._requests.cancel(
            self.request_id, targets, timeout=timeout, expiration=self._expiration
        )

    def _end(self) -> None:
        if self._active:
            self._active = False
            self._nodes.end()
            self._requests.untrack(self)
            self._nodes.log_summary()

    async def _send_all(self) -> None:
        """Publish to every node, then take the replies parked for this request id."""
        sender = RequestSender(self._requests, self._nodes, self._policies, self._expiration)
        await sender.send(self._messages, self._already_sent)
        self._messages = {}  # published: a model the caller let go of is freed meanwhile
        self._requests.deliver_parked(self)

    async def _wait(self) -> None:
        nodes = self._nodes
        watch = watches_presence(self._policies)
        check_every = self._requests.presence_check_interval
        next_check = 0.0
        states = nodes.watch()
        next_deadline: float | None = None
        while True:
            self.progress_relay.flush()
            self._report_answers()
            now = time.monotonic()
            if watch and now >= next_check:
                await self._update_presence(now)
                now = time.monotonic()
                next_check = now + check_every
            # Policies run when something they care about changed or a deadline passed; a
            # success only moves deadlines later, so the earliest one known stays a safe bound.
            if nodes.policies_due or (next_deadline is not None and now >= next_deadline):
                nodes.policies_due = False
                if self._apply_policies(now):
                    return
                if self._given_up:  # nodes a policy gave up on: their work is of no use now
                    given_up, self._given_up = self._given_up, []
                    await self.cancel(given_up)
                    now = time.monotonic()
                deadlines = [policy.next_deadline(states) for policy in self._policies]
                next_deadline = min((d for d in deadlines if d is not None), default=None)
            if nodes.unfinished <= 0:
                return
            wake_at = next_deadline if next_deadline is not None else now + 3600.0
            if watch:
                wake_at = min(wake_at, next_check)
            await nodes.changed.wait(wake_at)

    def _report_answers(self) -> None:
        on_answer = self._hooks.on_answer
        if on_answer is not None:
            for node in self._nodes.take_answered():
                on_answer(self.request_id, node)

    def _apply_policies(self, now: float) -> bool:
        nodes = self._nodes
        for policy in self._policies:
            verdict: Verdict = policy.evaluate(nodes.states, now)
            for node, status in verdict.marks.items():
                reason = verdict.reasons.get(node) or verdict.reason or repr(policy)
                nodes.finish(nodes.entries[node], status, reason)
                self._given_up.append(node)
            if verdict.stop_because_of is not None:
                self._report = PolicyReport(
                    policy=type(policy).__name__,
                    node_id=verdict.stop_because_of,
                    reason=verdict.reason,
                )
                logger.warning("request %s stopped by %r: %s", self.request_id, policy,
                               verdict.reason)  # fmt: skip
                return True
        return False

    async def _update_presence(self, now: float) -> None:
        requests, nodes = self._requests, self._nodes
        pending = nodes.pending()
        for entry in pending:
            gone = requests.presence.gone_since(entry.node_id, now)
            if gone is not None and entry.gone_since is None:
                entry.gone_since = gone
                nodes.touch(entry, recheck=True, wake=False)
        checks = requests.consumer_checks_per_tick
        for entry in pending[:checks]:
            if entry.gone_since is not None:
                continue
            queue = requests.topology.node_queue(entry.node_id).name
            try:
                consumers = await requests.transport.consumer_count(queue)
            except TransportError as exc:
                logger.info("cannot check consumers of %s: %s", queue, exc)
                continue
            if not consumers:
                entry.gone_since = now
                nodes.touch(entry, recheck=True, wake=False)
        if checks < len(pending):
            nodes.rotate(checks)  # so every pending node gets checked over a few ticks


def _per_node(
    messages: RequestMessage | MessagesByNode, targets: list[str] | None, request_id: str
) -> dict[str, RequestMessage]:
    """Each target node's message, stamped with ``request_id``."""
    if isinstance(messages, MessagesByNode):
        targets = list(messages) if targets is None else targets
        missing = [node for node in targets if node not in messages]
        if missing:
            raise ValueError(f"MessagesByNode has no message for nodes {missing}")
        chosen = {node: messages[node] for node in targets}
    else:
        targets = targets or []
        chosen = dict.fromkeys(targets, messages)
    if len(set(targets)) != len(targets):
        raise ValueError("a node is named twice")
    # One copy per distinct message, so a broadcast is encoded once for every node.
    copies: dict[int, RequestMessage] = {}
    per_node: dict[str, RequestMessage] = {}
    for node, message in chosen.items():
        copy = copies.get(id(message))
        if copy is None:
            copy = message
            if message.request_id != request_id:
                copy = message.model_copy(update={"request_id": request_id})
            copies[id(message)] = copy
        per_node[node] = copy
    return per_node


def _one(name: str, argument: T | None, hooked: T | None) -> T | None:
    """The value given as ``argument`` or in the hooks; refuse two different ones."""
    if argument is not None and hooked is not None and argument != hooked:
        raise ValueError(f"{name} is given both as an argument and in the hooks, differently")
    return argument if argument is not None else hooked


def _carried_id(messages: RequestMessage | MessagesByNode) -> str:
    """The request id the message carries, so the id a user reads is the one on the wire; for
    different messages per node, the one they share, else the first node's."""
    if isinstance(messages, MessagesByNode):
        ids = [message.request_id for message in messages.values()]
        return ids[0] if ids else new_id("request")
    return messages.request_id
