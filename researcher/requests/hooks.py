"""Request hooks: record a federated request while it runs, or resume one sent earlier.

Pass them to :meth:`Requests.send <researcher.requests.router.Requests.send>` (or give them to
a job); the request calls each hook itself, from the task that awaits it::

    hooks = RequestHooks(on_sent=lambda request_id, sent: store.record_sent(request_id, sent))
    async with requests.send(message, nodes, policies, hooks=hooks) as fed:
        ...
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from researcher.requests.progress import ProgressHook


@dataclass(frozen=True)
class RequestHooks:
    """How a request is recorded while it runs, and resumed by another process.

    Attributes:
        request_id: send under this id instead of a fresh one (to resume a request).
        already_sent: nodes an earlier process sent the request to, with the send time: they
            are not sent to again, their replies come from the durable reply queue.
        on_sending: called with the request id and the nodes before anything is published.
        on_sent: called with each node's send time once every publish is done.
        on_answer: called with the request id and a node id when that node's reply or error
            arrives (once per node, from the task waiting for the request).
        on_progress: called with each node's progress while it works on the request (a
            :class:`~researcher.requests.progress.ProgressEvent`, from the task waiting for
            the request: return quickly); an exception in it is logged.
    """

    request_id: str | None = None
    already_sent: Mapping[str, datetime] | None = None
    on_sending: Callable[[str, list[str]], None] | None = None
    on_sent: Callable[[str, dict[str, datetime]], None] | None = None
    on_answer: Callable[[str, str], None] | None = None
    on_progress: ProgressHook | None = None
