"""The researcher's side of secure aggregation: relay keys and shares, then unmask the sum.

See :mod:`broker_net.crypto.secagg` for the protocol. The :class:`SecaggAggregator` never holds a
node's seeds before the round they mask is over, and then only the seeds the protocol gives up:
the self seeds of the nodes it heard from and the key seeds of the nodes that dropped out.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from broker_net.crypto.identities import TrustStore, UnknownKeyError
from broker_net.crypto.masking import (
    MaskedVector,
    MaskStreams,
    decode_fixed_point,
    ring_add,
    ring_words,
    round_key,
    seed_commitment,
    self_mask_key,
    shamir_combine,
)
from broker_net.crypto.secagg import (
    RevealedShares,
    SecaggContext,
    SecaggError,
    SecaggKeys,
    pair_key,
)


@dataclass(frozen=True, slots=True)
class SecaggResult:
    """The outcome of one round: the weighted sum of the survivors' vectors and their weight."""

    weighted_sum: np.ndarray[Any, np.dtype[np.float64]]
    total_weight: int
    survivors: tuple[str, ...]

    @property
    def mean(self) -> np.ndarray[Any, np.dtype[np.float64]]:
        """The weighted mean, ``weighted_sum / total_weight``.

        Raises:
            ZeroDivisionError: every survivor gave weight 0.
        """
        if self.total_weight == 0:
            raise ZeroDivisionError("the survivors' weights sum to zero")
        return self.weighted_sum / self.total_weight


class SecaggAggregator:
    """Collects and relays one context's keys and shares, then aggregates each round.

    Usage: ``add_public_keys(k)`` for each node, relay ``public_keys()``; ``add_shares(node,
    s)`` for each node, relay ``shares_for(node)``; per round, collect masked vectors, and if
    ``needs_reveal(received)`` collect each survivor's ``reveal``; then ``aggregate(...)``.

    Args:
        context: the context sent to the nodes.
        trust: if given, each node's identity must be the one trusted there.
    """

    def __init__(self, context: SecaggContext, *, trust: TrustStore | None = None) -> None:
        self.context = context
        self._trust = trust
        self._keys: dict[str, SecaggKeys] = {}
        self._shares: dict[str, dict[str, bytes]] = {}
        self._keys_relayed = False
        self._shares_relayed = False

    @property
    def participants(self) -> tuple[str, ...]:
        """The nodes whose shares were collected: those whose vectors can be aggregated."""
        return tuple(sorted(self._shares))

    def add_public_keys(self, keys: SecaggKeys) -> None:
        """Exchange 1: accept one node's keys.

        Raises:
            SecaggError: keys already relayed, already given, or malformed.
            BadSignatureError: the keys are not signed by their node over this context.
            UnknownKeyError: with ``trust``, the node's identity is not the trusted one.
        """
        keys.verify(self.context)
        if self._trust is not None and self._trust.get(keys.node_id) != keys.identity:
            raise UnknownKeyError(f"{keys.node_id!r} is not the node in the trust store")
        if self._keys_relayed or keys.node_id in self._keys:
            raise SecaggError(f"keys of {keys.node_id!r} come too late or twice")
        self._keys[keys.node_id] = keys

    def public_keys(self) -> list[SecaggKeys]:
        """The keys to relay to every node that sent some; no keys are accepted afterwards.

        Raises:
            SecaggError: fewer than ``threshold`` nodes sent keys.
        """
        if len(self._keys) < self.context.threshold:
            raise SecaggError(f"{len(self._keys)} nodes sent keys, below the threshold")
        self._keys_relayed = True
        return [self._keys[node] for node in sorted(self._keys)]

    def add_shares(self, node_id: str, shares: Mapping[str, bytes]) -> None:
        """Exchange 2: accept the encrypted shares ``node_id`` made, one per other key holder.

        Raises:
            SecaggError: out of order, twice, or not one share for each other key holder.
        """
        expected = set(self._keys) - {node_id}
        if not self._keys_relayed or self._shares_relayed or node_id in self._shares:
            raise SecaggError(f"shares of {node_id!r} come out of order or twice")
        if node_id not in self._keys or set(shares) != expected:
            raise SecaggError(f"{node_id!r} must send one share for each of {sorted(expected)}")
        self._shares[node_id] = dict(shares)

    def shares_for(self, node_id: str) -> dict[str, bytes]:
        """The shares to relay to ``node_id``; no shares are accepted afterwards.

        Raises:
            SecaggError: ``node_id`` sent no shares, or fewer than ``threshold`` nodes did.
        """
        if node_id not in self._shares or len(self._shares) < self.context.threshold:
            raise SecaggError(f"{node_id!r} is not among enough participants")
        self._shares_relayed = True
        return {owner: self._shares[owner][node_id] for owner in self._shares if owner != node_id}

    def needs_reveal(self, received: Collection[str]) -> bool:
        """Whether the survivors must reveal shares before the round can be aggregated."""
        return self.context.self_mask or set(self.participants) != set(received)

    def aggregate(
        self,
        round: int,
        masked: Mapping[str, MaskedVector],
        revealed: Iterable[RevealedShares] = (),
    ) -> SecaggResult:
        """Sum the masked vectors of ``round`` and remove the masks that do not cancel.

        Args:
            round: the round of the context the vectors belong to.
            masked: each survivor's masked vector; the other participants count as dropped.
            revealed: the survivors' answers to ``reveal(round, masked.keys())``.

        Raises:
            SecaggError: unknown or too few survivors, vectors of unequal lengths, too few
                shares, or shares that rebuild a seed other than the one committed to.
            ValueError: the round is out of range.
        """
        context = self.context
        if not 0 <= round < context.rounds:
            raise ValueError(f"round must be in 0..{context.rounds - 1}, not {round}")
        survivors = tuple(sorted(masked))
        if not set(survivors) <= set(self.participants) or len(survivors) < context.threshold:
            raise SecaggError(f"cannot aggregate {survivors} among {self.participants}")
        lengths = {(vector.dtype, vector.shape) for vector in masked.values()}
        if len(lengths) != 1 or lengths.pop()[0] != np.uint64:
            raise SecaggError("masked vectors must be uint64 vectors of one length")
        ring = context.ring_bits
        total = np.zeros_like(masked[survivors[0]])
        if total.size % ring_words(ring):
            raise SecaggError(f"masked vectors must hold whole {ring}-bit values")
        for vector in masked.values():
            ring_add(total, vector, ring)
        answers = {r.node_id: r for r in revealed if r.round == round and r.node_id in masked}
        streams = MaskStreams(total.size)
        if context.self_mask:
            for node in survivors:
                seed = self._rebuild(answers, node, "self", round)
                if (
                    seed_commitment(context.secagg_id, node, round, seed)
                    != (self._keys[node].commitments[round])
                ):
                    raise SecaggError(f"shares of {node!r}'s self seed do not match its commitment")
                key = self_mask_key(context.secagg_id, node, round, seed)
                ring_add(total, streams(key), ring, subtract=True)
        for dropped in (node for node in self.participants if node not in masked):
            secret = round_key(
                context.secagg_id, dropped, round, self._rebuild(answers, dropped, "key", round)
            )
            if secret.public_key().public_bytes_raw() != self._keys[dropped].public_keys[round]:
                raise SecaggError(f"shares of {dropped!r}'s round key do not match its public key")
            for node in survivors:
                public = self._keys[node].public_keys[round]
                stream = streams(pair_key(context, round, dropped, secret, node, public))
                # The survivor added this stream when its id sorts first, subtracted it otherwise.
                ring_add(total, stream, ring, subtract=node < dropped)
        weighted_sum, total_weight = decode_fixed_point(total, scale=context.scale, ring_bits=ring)
        return SecaggResult(weighted_sum, total_weight, survivors)

    def _rebuild(
        self,
        answers: Mapping[str, RevealedShares],
        owner: str,
        kind: Literal["self", "key"],
        round_: int,
    ) -> int:
        points = {
            self.context.position(holder): shares[owner]
            for holder, answer in sorted(answers.items())
            if owner in (shares := answer.self_shares if kind == "self" else answer.key_shares)
        }
        needed = self.context.threshold
        if len(points) < needed:
            raise SecaggError(
                f"{len(points)} shares of {owner!r}'s {kind} seed for round {round_}, "
                f"{needed} needed"
            )
        return shamir_combine(dict(list(points.items())[:needed]))
