"""The pool of asynchronous training: which nodes get work, from presence.

A node of the experiment joins when its heartbeats are on time; it leaves when its request
times out, it disconnects or it answers an error, and it may rejoin only after a heartbeat
newer than its departure and ``retry_delay`` seconds (so a node failing at once is not asked
again and again in a tight loop). A node that failed ``max_failures`` times in a row (errors,
timeouts, disconnections, with no update in between) does not rejoin.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from researcher.jobs.sampling import availability
from researcher.requests.presence import PresenceTable


class NodePool:
    """The nodes with a request in flight, and who may join.

    Args:
        nodes: the nodes that may ever join.
        presence: the researcher's view of the nodes' heartbeats.
        retry_delay: seconds a node that left waits before it may rejoin.
        max_failures: failures in a row after which a node is not taken back.
    """

    def __init__(
        self, nodes: Iterable[str], presence: PresenceTable, retry_delay: float,
        max_failures: int = 3,
    ) -> None:  # fmt: skip
        self.nodes = list(nodes)
        self.presence = presence
        self.retry_delay = retry_delay
        self.max_failures = max_failures
        self.members: set[str] = set()
        self.failures: dict[str, int] = {}
        """Each node's failures since its last update."""
        self._left_at: dict[str, float] = {}
        self._empty_since: float | None = None

    def join(self, node: str) -> None:
        """``node`` gets work from now on."""
        self.members.add(node)

    def leave(self, node: str, *, failed: bool, now: float | None = None) -> None:
        """``node`` has no request in flight any more; ``failed`` when its last one failed."""
        self.members.discard(node)
        self._left_at[node] = time.monotonic() if now is None else now
        self.failures[node] = self.failures.get(node, 0) + 1 if failed else 0

    def answered(self, node: str) -> None:
        """``node`` sent an update: its failures in a row start again from zero."""
        self.failures[node] = 0

    def joiners(self, now: float) -> list[str]:
        """The online nodes outside the pool that may join it now, in the experiment's order."""
        online, _ = availability(self.nodes, self.presence, now=now)
        return [node for node in online if node not in self.members and self._may_join(node, now)]

    def empty_for(self, now: float) -> float:
        """Seconds the pool has been empty (0 while it has a member)."""
        if self.members:
            self._empty_since = None
            return 0.0
        if self._empty_since is None:
            self._empty_since = now
        return now - self._empty_since

    def _may_join(self, node: str, now: float) -> bool:
        left = self._left_at.get(node)
        if left is None:
            return True
        if self.failures.get(node, 0) >= self.max_failures:
            return False
        seen = self.presence.get(node)
        return (
            seen is not None and seen.last_seen_monotonic > left and now - left >= self.retry_delay
        )
