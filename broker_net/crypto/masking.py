"""The arithmetic of secure aggregation: fixed point, Shamir shares and mask streams.

Vectors are added in the ring of integers modulo 2**64 (numpy uint64, whose additions wrap),
after a fixed-point encoding that keeps signed values as two's complement. Masks are AES-256-CTR
key streams, a cryptographic generator as fast here as numpy's PCG64 (about 1 ms for a million
values). Seeds are shared with Shamir's scheme over the prime field of :data:`PRIME`.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

import msgpack
import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PRIME = 2**127 - 1
"""The Shamir field modulus, a Mersenne prime; seeds are 126-bit numbers below it."""
SEED_BITS = 126
"""Size of the random seeds that are shared."""
SHARE_SIZE = 16
"""Bytes of a seed or a share, big-endian."""

MaskedVector = np.ndarray[Any, np.dtype[np.uint64]]
_LABEL = b"broker-net/secagg/v1/"


def shamir_split(secret: int, xs: Sequence[int], threshold: int) -> list[int]:
    """Split ``secret`` into the values at ``xs`` (non-zero, distinct) of a random polynomial of
    degree ``threshold - 1`` over the field of :data:`PRIME`.

    Any ``threshold`` of the shares give the secret back; fewer say nothing about it.

    Raises:
        ValueError: the secret is outside the field, or the threshold is not in 1..len(xs).
    """
    if not 0 <= secret < PRIME or not 1 <= threshold <= len(xs):
        raise ValueError("the secret must be below PRIME and 1 <= threshold <= len(xs)")
    coefficients = [secret] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    shares = []
    for x in xs:
        value = 0
        for coefficient in reversed(coefficients):
            value = (value * x + coefficient) % PRIME
        shares.append(value)
    return shares


def shamir_combine(points: Mapping[int, int]) -> int:
    """Return the secret: the value at 0 of the polynomial through ``points`` (x to share).

    Give exactly ``threshold`` points: more are harmless if honest, fewer give a wrong value.
    """
    secret = 0
    for xi, yi in points.items():
        numerator, denominator = 1, 1
        for xj in points:
            if xj != xi:
                numerator = numerator * -xj % PRIME
                denominator = denominator * (xi - xj) % PRIME
        secret = (secret + yi * numerator * pow(denominator, -1, PRIME)) % PRIME
    return secret


def derive_key(secret: bytes, *info: str | int) -> bytes:
    """HKDF-SHA256 of ``secret`` into 32 bytes, for the purpose and ids given in ``info``."""
    packed: bytes = msgpack.packb(list(info))
    return HKDF(SHA256(), 32, salt=_LABEL, info=_LABEL + packed).derive(secret)


def round_key(secagg_id: str, node_id: str, round_: int, seed: int) -> X25519PrivateKey:
    """The X25519 key a node masks with in one round, derived from its shared key seed."""
    raw = derive_key(seed.to_bytes(SHARE_SIZE), "key", secagg_id, node_id, round_)
    return X25519PrivateKey.from_private_bytes(raw)


def self_mask_key(secagg_id: str, node_id: str, round_: int, seed: int) -> bytes:
    """The stream key of a node's self mask in one round, derived from its self seed."""
    return derive_key(seed.to_bytes(SHARE_SIZE), "self", secagg_id, node_id, round_)


def seed_commitment(secagg_id: str, node_id: str, round_: int, seed: int) -> bytes:
    """SHA-256 commitment to a self seed, published so a rebuilt seed can be checked."""
    packed: bytes = msgpack.packb(["commit", secagg_id, node_id, round_])
    return hashlib.sha256(_LABEL + packed + seed.to_bytes(SHARE_SIZE)).digest()


def pair_mask_key(
    secagg_id: str, round_: int, node: str, key: X25519PrivateKey, peer: str, public: bytes
) -> bytes:
    """The stream key two nodes share in one round: X25519 of one's key and the other's
    public key, the same from either side.

    Raises:
        ValueError: the public key is malformed or of low order.
    """
    shared = key.exchange(X25519PublicKey.from_public_bytes(public))
    return derive_key(shared, "pair", secagg_id, round_, min(node, peer), max(node, peer))


def encode_fixed_point(
    vector: np.ndarray[Any, Any], weight: int, *, clipping_range: float, scale: float
) -> MaskedVector:
    """Return ``round(clip(vector) * weight * scale)`` modulo 2**64, then ``weight`` itself.

    Raises:
        ValueError: the vector holds NaN or infinite values.
    """
    values = np.asarray(vector, dtype=np.float64).reshape(-1)
    if not np.isfinite(values).all():
        raise ValueError("cannot aggregate NaN or infinite values")
    encoded = np.empty(values.size + 1, np.uint64)
    scaled = np.clip(values, -clipping_range, clipping_range)
    np.multiply(scaled, float(weight) * scale, out=scaled)
    np.rint(scaled, out=scaled)
    encoded[:-1] = scaled.astype(np.int64).view(np.uint64)
    encoded[-1] = weight
    return encoded


def decode_fixed_point(total: MaskedVector, *, scale: float) -> tuple[np.ndarray[Any, Any], int]:
    """Read a sum of :func:`encode_fixed_point` vectors: the weighted sum and the total weight."""
    signed = total.view(np.int64)
    return signed[:-1].astype(np.float64) / scale, int(signed[-1])


class MaskStreams:
    """AES-256-CTR key streams read as uint64 vectors of one length.

    Each call overwrites the same buffer, so add the stream to its target before the next call.
    """

    def __init__(self, length: int) -> None:
        # numpy allocates zeroed memory lazily, where bytes() would write every byte.
        self._zeros = np.zeros(8 * length, np.uint8).data
        # update_into wants room for one block more than it writes.
        buffer = np.empty(8 * length + 15, np.uint8)
        self._buffer = buffer.data
        self._values: MaskedVector = buffer[: 8 * length].view(np.uint64)

    def __call__(self, key: bytes) -> MaskedVector:
        """Return the stream of the 32-byte ``key``, valid until the next call."""
        encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
        encryptor.update_into(self._zeros, self._buffer)
        return self._values
