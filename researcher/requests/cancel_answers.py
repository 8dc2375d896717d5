"""Waiting, before a process ends, for the nodes' answers to the requests it cancelled.

A cancelled request leaves two answers on their way from each node it was sent to: the
request's own (a ``CANCELLED`` error, or a reply that crossed the cancel) and the answer to the
cancel itself (a ``cancel_reply``, or an error refusing it). Both come through the researcher's
durable reply queue; one that comes after the process ended stays there, and the next process
with the same researcher id parks it. :func:`await_cancel_answers` waits for both, within a
deadline: the requests' answers go to the late-reply log, the cancels' answers are logged
(:class:`~researcher.requests.reply_log.ReplyLog`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from researcher.requests.router import Requests

logger = logging.getLogger(__name__)

POLL_INTERVAL = 0.05
"""Seconds between two looks at what has come."""


async def await_cancel_answers(
    requests: Requests, request_ids: Iterable[str], timeout: float
) -> set[str]:
    """Wait at most ``timeout`` seconds until each of ``request_ids`` (requests this process
    cancelled, so ended in it) has an answer in the late-reply log and an answer to each of
    its cancels. Returns the requests still missing an answer (logged)."""
    cancelled = set(request_ids)
    replies_due, cancels_due = set(cancelled), set(cancelled)
    with anyio.move_on_after(timeout):
        while replies_due or cancels_due:
            replies_due -= {late.request_id for late in requests.late_replies}
            cancels_due = requests.reply_log.cancels_unanswered(cancelled)
            if replies_due or cancels_due:
                await anyio.sleep(POLL_INTERVAL)
    missing = replies_due | cancels_due
    if missing:
        logger.info("no answer yet to the cancelled requests %s (or their cancels)",
                    sorted(missing))  # fmt: skip
    return missing
