"""Client sampling: which of an experiment's nodes train in each round.

::

    sampling = Sampling(fraction=0.5, seed=1, min_nodes=2, mandatory=["hospital-a"])
    available, skipped = availability(nodes, requests.presence, exclude=sampling.exclude)
    chosen = sampling.choose(round_number, available)

A node is available when its heartbeats are on time (:mod:`researcher.requests.presence`)
and it is not excluded; :func:`availability` gives the reason for each other node. Of the
available nodes a round takes ``count``, or ``ceil(fraction * available)``, at least
``min_nodes`` and at most all: the mandatory nodes first, the rest drawn without replacement
by a generator seeded with ``(seed, round)``, so the same seed makes the same choices.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from broker_net.topology import check_id
from researcher.errors import RequestError
from researcher.requests.presence import PresenceTable

EXCLUDED = "excluded"
NEVER_SEEN = "offline: no heartbeat received"
STOPPING = "offline: the node announced it is stopping"


class SamplingError(RequestError):
    """Raised when a round has fewer available nodes than it needs."""


@dataclass(frozen=True)
class Sampling:
    """How many of the available nodes each round takes, and which.

    Args:
        fraction: the share of the available nodes, in (0, 1]; rounded up.
        count: a number of nodes instead (at most the available ones).
        seed: seeds the choice (with the round number); ``None`` draws afresh each run.
        min_nodes: fewest available nodes a round needs, and fewest it takes.
        mandatory: nodes always taken when available (they count toward the number).
        exclude: nodes never taken.

    Without ``fraction`` and ``count`` every available node is taken.

    Raises:
        ValueError: settings out of range, both ``fraction`` and ``count``, or a node both
            mandatory and excluded.
    """

    fraction: float | None = None
    count: int | None = None
    seed: int | None = None
    min_nodes: int = 1
    mandatory: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "mandatory", tuple(self.mandatory))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        if self.fraction is not None and self.count is not None:
            raise ValueError("give a fraction or a count of nodes, not both")
        if self.fraction is not None and not 0 < self.fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], not {self.fraction}")
        if self.count is not None and self.count < 1:
            raise ValueError(f"count must be at least 1, not {self.count}")
        if self.min_nodes < 1:
            raise ValueError(f"min_nodes must be at least 1, not {self.min_nodes}")
        for node in (*self.mandatory, *self.exclude):
            check_id("node id", node)
        both = sorted(set(self.mandatory) & set(self.exclude))
        if both:
            raise ValueError(f"nodes both mandatory and excluded: {both}")

    def size(self, available: int) -> int:
        """How many nodes a round takes out of ``available``."""
        if self.count is not None:
            wanted = self.count
        elif self.fraction is not None:
            wanted = math.ceil(self.fraction * available - 1e-9)
        else:
            wanted = available
        return min(available, max(wanted, self.min_nodes))

    def available(
        self, round: int, nodes: Iterable[str], presence: PresenceTable
    ) -> tuple[list[str], dict[str, str]]:
        """The nodes among ``nodes`` that round ``round`` may take, and why each other one may
        not (:func:`availability`).

        Raises:
            SamplingError: fewer than ``min_nodes`` are available; the message gives each
                other node's reason.
        """
        available, skipped = availability(nodes, presence, exclude=self.exclude)
        if len(available) < self.min_nodes:
            raise SamplingError(
                f"round {round}: {len(available)} node(s) available, {self.min_nodes} needed; "
                + "; ".join(f"{node}: {why}" for node, why in skipped.items())
            )
        return available, skipped

    def choose(self, round: int, available: Sequence[str]) -> list[str]:
        """The nodes of round ``round`` among ``available``, sorted.

        Raises:
            SamplingError: fewer than ``min_nodes`` nodes are available.
        """
        pool = sorted(set(available) - set(self.exclude))
        if len(pool) < self.min_nodes:
            raise SamplingError(
                f"round {round}: {len(pool)} node(s) available, {self.min_nodes} needed"
            )
        mandatory = [node for node in self.mandatory if node in pool]
        others = [node for node in pool if node not in mandatory]
        wanted = max(self.size(len(pool)), len(mandatory))
        rng = np.random.default_rng(None if self.seed is None else [self.seed, round])
        drawn = rng.choice(len(others), size=wanted - len(mandatory), replace=False)
        return sorted([*mandatory, *(others[int(index)] for index in drawn)])


def availability(
    nodes: Iterable[str],
    presence: PresenceTable,
    *,
    exclude: Iterable[str] = (),
    now: float | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The nodes among ``nodes`` that are online and not excluded, and why each other one
    is not."""
    now = time.monotonic() if now is None else now
    excluded = set(exclude)
    available: list[str] = []
    skipped: dict[str, str] = {}
    for node in nodes:
        seen = presence.get(node)
        if node in excluded:
            skipped[node] = EXCLUDED
        elif seen is None:
            skipped[node] = NEVER_SEEN
        elif seen.stopping:
            skipped[node] = STOPPING
        elif not seen.online(now, presence.patience):
            skipped[node] = (
                f"offline: last heartbeat {now - seen.last_seen_monotonic:.1f} s ago "
                f"(expected every {seen.interval:g} s)"
            )
        else:
            available.append(node)
    return available, skipped
