"""The arithmetic of secure aggregation: fixed point, Shamir shares and mask streams.

Vectors are added in the ring of integers modulo 2**ring_bits, ring_bits a multiple of 64, after
a fixed-point encoding that keeps signed values as two's complement. With 64 bits a value is one
numpy uint64 (whose additions wrap); a wider ring writes each value as ``ring_bits / 64`` uint64
words, least significant first, the vector holding all first words, then all second words...,
and adds them with carries (:func:`ring_add`), so that the ring is exactly Z/2**ring_bits and the
unmasked sum says nothing more than the sum. Masks are AES-256-CTR
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


WORD_BITS = 64
"""Bits of one word of a ring element."""
_WORD = 2.0**WORD_BITS


def ring_words(ring_bits: int) -> int:
    """Words (uint64) of one ring element: ``ring_bits / 64``."""
    return ring_bits // WORD_BITS


def encode_fixed_point(
    vector: np.ndarray[Any, Any],
    weight: int,
    *,
    clipping_range: float,
    scale: float,
    ring_bits: int = WORD_BITS,
) -> MaskedVector:
    """Return ``round(clip(vector) * weight * scale)`` modulo 2**ring_bits, then ``weight``
    itself, each value as ``ring_bits / 64`` words (see the module's layout).

    Raises:
        ValueError: the vector holds NaN or infinite values, or a value does not fit the ring.
    """
    values = np.asarray(vector, dtype=np.float64).reshape(-1)
    if not np.isfinite(values).all():
        raise ValueError("cannot aggregate NaN or infinite values")
    scaled = np.clip(values, -clipping_range, clipping_range)
    np.multiply(scaled, float(weight) * scale, out=scaled)
    np.rint(scaled, out=scaled)
    words = ring_words(ring_bits)
    if words == 1:
        encoded = np.empty(values.size + 1, np.uint64)
        encoded[:-1] = scaled.astype(np.int64).view(np.uint64)
        encoded[-1] = weight
        return encoded
    limit = 2.0 ** (ring_bits - 1)
    if scaled.size and not float(np.max(np.abs(scaled))) < limit:
        raise ValueError(f"a fixed-point value does not fit the {ring_bits}-bit ring")
    return _to_words(np.append(scaled, float(weight)), words).reshape(-1)


def _to_words(integral: np.ndarray[Any, Any], words: int) -> np.ndarray[Any, Any]:
    """Integral floats (below 2**(64 words - 1) in magnitude) as two's-complement words."""
    out = np.empty((words, integral.size), np.uint64)
    rest = np.abs(integral)
    for word in range(words):
        # Exact: rest is an integral float, so are its quotient and remainder by 2**64.
        high = np.floor(rest / _WORD)
        out[word] = (rest - high * _WORD).astype(np.uint64)
        rest = high
    negative = integral < 0
    if negative.any():
        out[:, negative] = ring_negate(out[:, negative])
    return out


def ring_negate(words: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """``-x`` modulo 2**(64 len(words)) of words shaped ``(words, n)``, a new array."""
    out = np.invert(words)
    carry = np.ones(out.shape[1:], bool)
    for word in range(out.shape[0]):
        out[word] += carry.astype(np.uint64)
        carry &= out[word] == 0
    return np.asarray(out)


def ring_add(
    total: MaskedVector, other: MaskedVector, ring_bits: int, *, subtract: bool = False
) -> None:
    """``total += other`` (or ``-=``) in place, modulo 2**ring_bits, with the words' carries."""
    words = ring_words(ring_bits)
    if words == 1:
        (np.subtract if subtract else np.add)(total, other, out=total)
        return
    target = total.reshape(words, -1)
    addend = other.reshape(words, -1)
    if subtract:
        addend = ring_negate(addend)
    carry = np.zeros(target.shape[1], np.uint64)
    for word in range(words):
        before = target[word].copy()
        target[word] += addend[word]
        overflow = target[word] < before
        target[word] += carry
        overflow |= (target[word] == 0) & (carry == 1)
        carry = overflow.astype(np.uint64)


def decode_fixed_point(
    total: MaskedVector, *, scale: float, ring_bits: int = WORD_BITS
) -> tuple[np.ndarray[Any, Any], int]:
    """Read a sum of :func:`encode_fixed_point` vectors: the weighted sum and the total weight.

    In a wider ring each value is read as sign and magnitude, so the float it becomes is off by
    at most a few units in its last place, whatever the sign.
    """
    words = ring_words(ring_bits)
    if words == 1:
        signed = total.view(np.int64)
        return signed[:-1].astype(np.float64) / scale, int(signed[-1])
    planar = total.reshape(words, -1)
    negative = planar[-1] >= np.uint64(2**63)
    magnitude = planar.copy()
    if negative.any():
        magnitude[:, negative] = ring_negate(planar[:, negative])
    value = np.zeros(planar.shape[1], np.float64)
    for word in reversed(range(words)):
        value = value * _WORD + magnitude[word].astype(np.float64)
    value[negative] *= -1.0
    weight = sum(int(magnitude[word, -1]) << (WORD_BITS * word) for word in range(words))
    return value[:-1] / scale, -weight if negative[-1] else weight


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
