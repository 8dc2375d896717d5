"""Secure aggregation: the researcher learns the weighted sum of the nodes' vectors, not one.

After Bonawitz et al. (CCS 2017), for a :class:`SecaggContext` of n nodes, threshold t and R
rounds, driven by the job layer through four exchanges:

1. keys: each :class:`SecaggNode` draws, for every round, a key seed (from which it derives an
   X25519 key pair) and a self-mask seed. It publishes the public keys and SHA-256 commitments
   to the self seeds as :class:`SecaggKeys`, signed with its identity over the whole context.
2. shares: given all participants' keys, each node splits every seed t-of-n (Shamir, modulo
   2**127 - 1), one share per participant including itself, and encrypts each peer's shares to
   that peer. The researcher relays them; no node talks to another directly.
3. mask: in round r a node encodes ``weight * vector`` in fixed point, appends ``weight`` and
   adds, modulo 2**ring_bits (64 by default), the AES-CTR stream of its self seed and, for
   every peer, the stream keyed by their round-r X25519 secret: added when its id sorts first,
   subtracted otherwise, so that pairwise masks cancel in the sum.
4. reveal: the researcher names the nodes whose vectors it received. Each of them returns its
   share of every survivor's self seed and of every dropped node's key seed, never both for one
   node and round. With t shares of each the researcher removes what is left of the masks.

Seeds are fresh per round, so rebuilding a dropped node's key exposes none of its other
rounds, and the self mask keeps hiding a vector that arrives after its sender was declared
dropped. The researcher is trusted to follow the protocol; nodes that pin their peers' keys
(``peer_trust``) also stop it from standing in for a peer.

This module holds what the parties agree on and exchange;
:mod:`broker_net.crypto.secagg_node` and :mod:`broker_net.crypto.secagg_aggregator` hold each
side, :mod:`broker_net.crypto.masking` the arithmetic.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import msgpack
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from broker_net.codes import ErrorCode
from broker_net.crypto.encryption import EncryptionContext
from broker_net.crypto.identities import PublicIdentity
from broker_net.crypto.masking import SHARE_SIZE, pair_mask_key
from broker_net.errors import SecurityError

_LABEL = b"broker-net/secagg/v1/"

MAX_RING_BITS = 512
"""The widest ring of a context: 8 words per value."""
MAX_PRECISION_BITS = 960
"""The most fractional bits of a context (its scale, 2**precision_bits, stays a finite float)."""


class SecaggError(SecurityError):
    """Raised when secure aggregation cannot proceed: a step out of order, missing or
    inconsistent keys or shares, or too few nodes left."""

    code: ClassVar[ErrorCode] = ErrorCode.SECAGG_FAILED


def _packed(*items: Any) -> bytes:
    packed: bytes = msgpack.packb(list(items))
    return packed


@dataclass(frozen=True, slots=True)
class SecaggContext:
    """The parameters every party of one secure aggregation agrees on.

    Attributes:
        secagg_id: unique id of this context.
        experiment_id: the experiment it serves.
        node_ids: the nodes invited, sorted.
        threshold: shares needed to rebuild a seed, and fewest vectors aggregated (>= 2).
        rounds: aggregations this context serves, numbered from 0; each has fresh seeds.
        clipping_range: values are clipped to [-clipping_range, clipping_range].
        precision_bits: values are rounded to multiples of 2**-precision_bits.
        max_weight: largest weight (sample size) a node may give its vector.
        ring_bits: vectors add up modulo 2**ring_bits, a multiple of 64 up to
            :data:`MAX_RING_BITS`; :func:`ring_bits_for` gives the smallest that cannot
            overflow. Left out of :meth:`to_dict` when 64, so a 64-bit context reads as before.
        self_mask: whether vectors carry a self mask. Without it a round with no dropout
            needs no reveal, but a vector that arrives after its sender was declared dropped
            is readable by the researcher.
    """

    secagg_id: str
    experiment_id: str
    node_ids: tuple[str, ...]
    threshold: int
    rounds: int = 1
    clipping_range: float = 1000.0
    precision_bits: int = 20
    max_weight: int = 2**20
    self_mask: bool = True
    ring_bits: int = 64

    def __post_init__(self) -> None:
        # Normalised so that the digest every party signs is the same on every side.
        object.__setattr__(self, "node_ids", tuple(sorted(self.node_ids)))
        object.__setattr__(self, "clipping_range", float(self.clipping_range))
        if len(set(self.node_ids)) != len(self.node_ids) or len(self.node_ids) < 2:
            raise ValueError("secure aggregation needs at least two distinct nodes")
        if not 2 <= self.threshold <= len(self.node_ids):
            raise ValueError(f"threshold must be between 2 and {len(self.node_ids)}")
        if self.rounds < 1 or self.max_weight < 1 or not self.clipping_range > 0:
            raise ValueError("rounds, max_weight and clipping_range must be positive")
        if self.ring_bits % 64 or not 64 <= self.ring_bits <= MAX_RING_BITS:
            raise ValueError(f"ring_bits must be a multiple of 64 up to {MAX_RING_BITS}")
        if not 0 <= self.precision_bits <= MAX_PRECISION_BITS:
            raise ValueError(f"precision_bits must be in 0..{MAX_PRECISION_BITS}")
        needed = ring_bits_needed(
            len(self.node_ids), self.max_weight, self.clipping_range, self.precision_bits
        )
        if needed > self.ring_bits:
            raise ValueError(
                f"{len(self.node_ids)} nodes x max_weight {self.max_weight} x clipping_range "
                f"{self.clipping_range:g} x 2**{self.precision_bits} needs {needed} bits (sign and "
                f"rounding included), more than its {self.ring_bits}-bit ring"
            )

    @property
    def scale(self) -> float:
        """The fixed-point scale, ``2**precision_bits``."""
        return 2.0**self.precision_bits

    def position(self, node_id: str) -> int:
        """The x coordinate of ``node_id``'s Shamir shares: its 1-based rank in ``node_ids``."""
        return self.node_ids.index(node_id) + 1

    def digest(self) -> bytes:
        """SHA-256 of the context, signed by every node with its keys."""
        return hashlib.sha256(_packed(self.to_dict())).digest()

    def to_dict(self) -> dict[str, Any]:
        """The context as plain data, to send in ``secagg_arguments``."""
        data = asdict(self) | {"node_ids": list(self.node_ids)}
        if self.ring_bits == 64:
            del data["ring_bits"]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SecaggContext:
        """Read what :meth:`to_dict` made.

        Raises:
            ValueError: the data does not describe a valid context.
        """
        try:
            return cls(**(dict(data) | {"node_ids": tuple(data["node_ids"])}))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"bad secure aggregation context: {exc}") from exc


@dataclass(frozen=True, slots=True)
class SecaggKeys:
    """A node's signed round public keys and self-seed commitments for one context."""

    node_id: str
    identity: PublicIdentity
    public_keys: tuple[bytes, ...]
    commitments: tuple[bytes, ...]
    signature: bytes

    @staticmethod
    def signed_bytes(
        context: SecaggContext,
        identity: PublicIdentity,
        keys: Sequence[bytes],
        commits: Sequence[bytes],
    ) -> bytes:
        """The bytes a node signs: the context digest, its id, keys and commitments."""
        return _LABEL + _packed(context.digest(), identity.party_id, list(keys), list(commits))

    def verify(self, context: SecaggContext) -> None:
        """Check that the keys fit ``context`` and were signed by ``identity``.

        Raises:
            SecaggError: the node is not invited, or keys are missing.
            BadSignatureError: the signature does not verify (altered, or another context).
        """
        if self.node_id not in context.node_ids or self.identity.party_id != self.node_id:
            raise SecaggError(f"{self.node_id!r} is not a node of context {context.secagg_id!r}")
        sizes = {len(key) for key in self.public_keys + self.commitments}
        if len(self.public_keys) != context.rounds or len(self.commitments) != context.rounds:
            raise SecaggError(f"{self.node_id!r} sent keys for the wrong number of rounds")
        if sizes != {32}:
            raise SecaggError(f"{self.node_id!r} sent keys of the wrong size")
        message = self.signed_bytes(context, self.identity, self.public_keys, self.commitments)
        self.identity.verify(message, self.signature)

    def to_dict(self) -> dict[str, Any]:
        """The keys as plain data, for a reply or a relay."""
        return {
            "node_id": self.node_id,
            "identity": self.identity.to_text(),
            "public_keys": list(self.public_keys),
            "commitments": list(self.commitments),
            "signature": self.signature,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SecaggKeys:
        """Read what :meth:`to_dict` made; call :meth:`verify` before use.

        Raises:
            SecaggError: the data is malformed.
            BadSignatureError: the identity's self-signature does not verify.
        """
        try:
            return cls(
                str(data["node_id"]),
                PublicIdentity.from_text(data["identity"]),
                tuple(bytes(key) for key in data["public_keys"]),
                tuple(bytes(commit) for commit in data["commitments"]),
                bytes(data["signature"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SecaggError(f"malformed secure aggregation keys: {exc}") from exc


@dataclass(frozen=True, slots=True)
class RevealedShares:
    """One survivor's shares for one round: of survivors' self seeds, of dropped nodes' keys."""

    node_id: str
    round: int
    self_shares: Mapping[str, int]
    key_shares: Mapping[str, int]

    def to_dict(self) -> dict[str, Any]:
        """The shares as plain data (each share as 16 big-endian bytes)."""
        return {
            "node_id": self.node_id,
            "round": self.round,
            "self_shares": {k: v.to_bytes(SHARE_SIZE) for k, v in self.self_shares.items()},
            "key_shares": {k: v.to_bytes(SHARE_SIZE) for k, v in self.key_shares.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RevealedShares:
        """Read what :meth:`to_dict` made.

        Raises:
            SecaggError: the data is malformed.
        """
        try:
            shares = [
                {str(k): int.from_bytes(v) for k, v in data[name].items()}
                for name in ("self_shares", "key_shares")
            ]
            return cls(str(data["node_id"]), int(data["round"]), shares[0], shares[1])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SecaggError(f"malformed revealed shares: {exc}") from exc


def ring_bits_needed(
    nodes: int, max_weight: int, clipping_range: float, precision_bits: int
) -> int:
    """Bits of a ring holding any sum of ``nodes`` vectors of ``|value| <= clipping_range``,
    weighted by at most ``max_weight`` and scaled by 2**precision_bits: that bound's bits, plus
    one for the sign and one for the rounding of each value. Not rounded to a multiple of 64."""
    bound = nodes * max_weight * math.ldexp(clipping_range, precision_bits)
    return math.frexp(bound)[1] + 2 if bound >= 1 else 2


def ring_bits_for(nodes: int, max_weight: int, clipping_range: float, precision_bits: int) -> int:
    """The smallest ring (a multiple of 64 bits) a context of these parameters fits in.

    Raises:
        ValueError: it would be wider than :data:`MAX_RING_BITS`.
    """
    needed = ring_bits_needed(nodes, max_weight, clipping_range, precision_bits)
    ring = 64 * max(1, -(-needed // 64))
    if ring > MAX_RING_BITS:
        raise ValueError(
            f"{nodes} nodes x max_weight {max_weight} x range {clipping_range:g} x "
            f"2**{precision_bits} needs {needed} bits, beyond the {MAX_RING_BITS}-bit ring: "
            "declare a narrower range or fewer precision bits"
        )
    return ring


def pair_key(
    context: SecaggContext, round_: int, node: str, key: X25519PrivateKey, peer: str, public: bytes
) -> bytes:
    """The stream key of the pairwise mask of ``node`` and ``peer`` in ``round_``.

    Raises:
        SecaggError: ``public`` is not a usable X25519 key.
    """
    try:
        return pair_mask_key(context.secagg_id, round_, node, key, peer, public)
    except ValueError as exc:
        raise SecaggError(f"unusable round key between {node!r} and {peer!r}") from exc


def shares_context(context: SecaggContext, owner: str) -> EncryptionContext:
    """The encryption context of the seed shares ``owner`` sends to each participant."""
    return EncryptionContext(
        context.experiment_id, 0, owner, context.secagg_id, purpose="secagg-shares"
    )
