"""A node's side of secure aggregation: its seeds, their shares, its masked vectors.

See :mod:`broker_net.crypto.secagg` for the protocol. A :class:`SecaggNode` lives in the node agent
for as long as its context; its seeds leave it only as shares encrypted to the other nodes.
"""

from __future__ import annotations

import secrets
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import numpy as np

from broker_net.crypto.encryption import decrypt_from, encrypt_for
from broker_net.crypto.identities import Identity, TrustStore, UnknownKeyError
from broker_net.crypto.masking import (
    SEED_BITS,
    SHARE_SIZE,
    MaskedVector,
    MaskStreams,
    encode_fixed_point,
    ring_add,
    round_key,
    seed_commitment,
    self_mask_key,
    shamir_split,
)
from broker_net.crypto.secagg import (
    RevealedShares,
    SecaggContext,
    SecaggError,
    SecaggKeys,
    pair_key,
    shares_context,
)


class SecaggNode:
    """One node's side of a secure aggregation context.

    Usage, one call per exchange: ``public_keys()``; ``receive_public_keys(all_keys)``, which
    returns the encrypted shares to relay; ``receive_shares(shares)``; then per round
    ``mask(vector, round=r, weight=n)`` and, when the researcher asks, ``reveal(r, survivors)``.

    Args:
        identity: the node's identity; its id must be one of the context's nodes.
        context: the context, as the researcher sent it.
        peer_trust: if given, every peer's identity must be the one pinned there; otherwise
            the identities relayed by the researcher are believed.

    Raises:
        SecaggError: the identity is not one of the context's nodes.
    """

    def __init__(
        self, identity: Identity, context: SecaggContext, *, peer_trust: TrustStore | None = None
    ) -> None:
        if identity.party_id not in context.node_ids:
            raise SecaggError(f"{identity.party_id!r} is not a node of {context.secagg_id!r}")
        self.node_id = identity.party_id
        self.context = context
        self._identity = identity
        self._peer_trust = peer_trust
        # One key seed and one self seed per round; shares list the key seeds first.
        self._seeds = [secrets.randbits(SEED_BITS) for _ in range(2 * context.rounds)]
        self._round_keys = [
            round_key(context.secagg_id, self.node_id, r, self._seeds[r])
            for r in range(context.rounds)
        ]
        public = tuple(key.public_key().public_bytes_raw() for key in self._round_keys)
        commits = tuple(
            seed_commitment(context.secagg_id, self.node_id, r, self._seeds[context.rounds + r])
            for r in range(context.rounds)
        )
        signed = SecaggKeys.signed_bytes(context, identity.public(), public, commits)
        self._keys = SecaggKeys(
            self.node_id, identity.public(), public, commits, identity.sign(signed)
        )
        self._peers: dict[str, SecaggKeys] = {}
        self._held: dict[str, list[int]] = {}  # owner -> this node's shares of its seeds
        self.participants: tuple[str, ...] = ()
        """The nodes whose shares this node holds, itself included: those it masks with."""
        self._masked: set[int] = set()
        self._revealed: dict[int, tuple[frozenset[str], RevealedShares]] = {}

    def public_keys(self) -> SecaggKeys:
        """Exchange 1: this node's signed keys, for the researcher to relay to the others."""
        return self._keys

    def receive_public_keys(self, all_keys: Iterable[SecaggKeys]) -> dict[str, bytes]:
        """Exchange 2: check the participants' keys; return each peer's encrypted shares.

        Raises:
            SecaggError: called twice, malformed keys, or fewer than ``threshold`` nodes.
            BadSignatureError: keys not signed by their node over this very context.
            UnknownKeyError: with ``peer_trust``, a peer's identity is not the pinned one.
        """
        if self._peers:
            raise SecaggError("the participants' keys were already received")
        peers = {keys.node_id: keys for keys in all_keys if keys.node_id != self.node_id}
        for keys in peers.values():
            keys.verify(self.context)
            if self._peer_trust is not None and self._peer_trust.get(keys.node_id) != keys.identity:
                raise UnknownKeyError(f"{keys.node_id!r} is not the node pinned in the trust store")
        if len(peers) + 1 < self.context.threshold:
            raise SecaggError(f"only {len(peers) + 1} nodes have keys, below the threshold")
        self._peers = peers
        owners = sorted([*peers, self.node_id])
        xs = [self.context.position(owner) for owner in owners]
        split = [shamir_split(seed, xs, self.context.threshold) for seed in self._seeds]
        held = {owner: [shares[i] for shares in split] for i, owner in enumerate(owners)}
        self._held[self.node_id] = held[self.node_id]
        context = shares_context(self.context, self.node_id)
        return {
            peer: encrypt_for(
                keys.identity,
                self._identity,
                b"".join(share.to_bytes(SHARE_SIZE) for share in held[peer]),
                context=context,
            )
            for peer, keys in peers.items()
        }

    def receive_shares(self, shares: Mapping[str, bytes]) -> None:
        """Exchange 3: keep the shares the other participants made for this node.

        Raises:
            SecaggError: out of order, a sender without keys, malformed shares, or fewer than
                ``threshold`` participants.
            DecryptionError: shares altered, or not made for this node and context.
        """
        if not self._peers or self.participants:
            raise SecaggError("shares come once, after the participants' keys")
        size = len(self._seeds) * SHARE_SIZE
        for owner, ciphertext in shares.items():
            if owner not in self._peers:
                raise SecaggError(f"shares from {owner!r}, whose keys this node never received")
            plain = decrypt_from(
                self._peers[owner].identity,
                self._identity,
                ciphertext,
                context=shares_context(self.context, owner),
            )
            if len(plain) != size:
                raise SecaggError(f"{owner!r} sent {len(plain)} bytes of shares, not {size}")
            self._held[owner] = [
                int.from_bytes(plain[i : i + SHARE_SIZE]) for i in range(0, size, SHARE_SIZE)
            ]
        participants = tuple(sorted([*shares, self.node_id]))
        if len(participants) < self.context.threshold:
            raise SecaggError(f"only {len(participants)} participants, below the threshold")
        self.participants = participants

    def mask(self, vector: np.ndarray[Any, Any], *, round: int, weight: int = 1) -> MaskedVector:
        """Return ``weight * vector``, flattened, fixed-point encoded and masked for ``round``.

        Raises:
            SecaggError: setup unfinished, or the round already masked or revealed (masking
                twice would give away the difference of the two vectors).
            ValueError: the round or weight is out of range, or the vector is not finite.
        """
        context = self.context
        self._check_round(round)
        if not 0 <= weight <= context.max_weight:
            raise ValueError(f"weight must be in 0..{context.max_weight}, not {weight}")
        if not self.participants or round in self._masked or round in self._revealed:
            raise SecaggError(f"round {round} cannot be masked: setup unfinished or round used")
        ring = context.ring_bits
        masked = encode_fixed_point(
            vector, weight, clipping_range=context.clipping_range, scale=context.scale,
            ring_bits=ring,
        )  # fmt: skip
        streams = MaskStreams(masked.size)
        if context.self_mask:
            seed = self._seeds[context.rounds + round]
            key = self_mask_key(context.secagg_id, self.node_id, round, seed)
            ring_add(masked, streams(key), ring)
        for peer in self.participants:
            if peer != self.node_id:
                public = self._peers[peer].public_keys[round]
                key = pair_key(context, round, self.node_id, self._round_keys[round], peer, public)
                ring_add(masked, streams(key), ring, subtract=self.node_id > peer)
        self._masked.add(round)
        return masked

    def reveal(self, round: int, survivors: Collection[str]) -> RevealedShares:
        """Exchange 4: shares of the survivors' self seeds and of the dropped nodes' key seeds.

        Asked again with the same survivors it answers the same; it refuses any other set for
        a round, which could make it reveal both seeds of one node.

        Raises:
            SecaggError: setup unfinished, unknown or too few survivors, this node named a
                survivor of a round it never masked, or another set than before.
            ValueError: the round is out of range.
        """
        self._check_round(round)
        chosen = frozenset(survivors)
        if round in self._revealed:
            if self._revealed[round][0] != chosen:
                raise SecaggError(f"round {round} was revealed for other survivors")
            return self._revealed[round][1]
        if not self.participants or not chosen <= set(self.participants):
            raise SecaggError("survivors must be participants of a finished setup")
        if len(chosen) < self.context.threshold:
            raise SecaggError(f"{len(chosen)} survivors are below the threshold")
        if self.node_id in chosen and round not in self._masked:
            raise SecaggError(f"named a survivor of round {round}, which this node never masked")
        offset = self.context.rounds + round
        revealed = RevealedShares(
            self.node_id,
            round,
            {node: self._held[node][offset] for node in chosen if self.context.self_mask},
            {node: self._held[node][round] for node in self.participants if node not in chosen},
        )
        self._revealed[round] = (chosen, revealed)
        return revealed

    def _check_round(self, round_: int) -> None:
        if not 0 <= round_ < self.context.rounds:
            raise ValueError(f"round must be in 0..{self.context.rounds - 1}, not {round_}")
