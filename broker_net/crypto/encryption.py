"""Payloads encrypted from one party to another, bound to the request they belong to.

The key of each payload comes from two X25519 agreements: an ephemeral key of the sender with
the recipient's agreement key (so every payload has a fresh key), and the sender's agreement key
with the recipient's (so only that sender could have made it). HKDF-SHA256 turns both into an
AES-256-GCM key, with both parties' ids and fingerprints in the info. The associated data binds
the :class:`EncryptionContext`: a ciphertext replayed into another experiment, round, node,
request or purpose fails to decrypt.

Wire format of a ciphertext::

    version (1 byte, 1) | ephemeral X25519 public key (32) | nonce (12) | AES-GCM output
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from broker_net.codec import decode, encode
from broker_net.codes import ErrorCode
from broker_net.crypto.identities import Identity, PublicIdentity
from broker_net.errors import DecodeError, SecurityError

_VERSION = 1
_LABEL = b"broker-net/encrypt/v1"
_NONCE_SIZE = 12
_KEY_SIZE = 32
_HEADER_SIZE = 1 + _KEY_SIZE + _NONCE_SIZE
_TAG_SIZE = 16


class DecryptionError(SecurityError):
    """Raised when a ciphertext is malformed, altered, or was made for another context or party."""

    code: ClassVar[ErrorCode] = ErrorCode.DECRYPTION_FAILED


@dataclass(frozen=True, slots=True)
class EncryptionContext:
    """What a ciphertext belongs to; decryption needs the very same values.

    Attributes:
        experiment_id: the experiment.
        round: the training round (0 outside training).
        node_id: the node the payload comes from or goes to.
        request_id: the request that carries the payload.
        purpose: what the payload is, such as ``"optim_aux_var"`` or ``"params"``, so that one
            kind of payload cannot stand in for another.
    """

    experiment_id: str
    round: int
    node_id: str
    request_id: str
    purpose: str = "payload"

    def associated_data(self) -> bytes:
        """The bytes authenticated, but not encrypted, with the payload."""
        packed: bytes = msgpack.packb(
            [self.purpose, self.experiment_id, self.round, self.node_id, self.request_id]
        )
        return packed


def _derive_key(
    sender: PublicIdentity, recipient: PublicIdentity, ephemeral: bytes, shared: bytes
) -> bytes:
    info = _LABEL + msgpack.packb(
        [sender.party_id, sender.fingerprint, recipient.party_id, recipient.fingerprint, ephemeral]
    )
    return HKDF(SHA256(), _KEY_SIZE, salt=_LABEL, info=info).derive(shared)


def encrypt_for(
    recipient: PublicIdentity,
    sender: Identity,
    plaintext: bytes,
    *,
    context: EncryptionContext,
) -> bytes:
    """Encrypt ``plaintext`` so that only ``recipient`` can read it, and know it came from us.

    Usage: ``encrypt_for(trust.get("node-1"), identity, data, context=context)``.

    Raises:
        BadSignatureError: the recipient's agreement key is unusable.
        OverflowError: the plaintext is 2 GiB or more, the most AES-GCM takes here.
    """
    ephemeral_key = X25519PrivateKey.generate()
    ephemeral = ephemeral_key.public_key().public_bytes_raw()
    static = sender.exchange(recipient.agreement_key)
    agreement_key = X25519PublicKey.from_public_bytes(recipient.agreement_key)
    shared = ephemeral_key.exchange(agreement_key) + static
    key = _derive_key(sender.public(), recipient, ephemeral, shared)
    header = bytes([_VERSION]) + ephemeral + os.urandom(_NONCE_SIZE)
    sealed = AESGCM(key).encrypt(
        header[-_NONCE_SIZE:], plaintext, header + context.associated_data()
    )
    return header + sealed


def decrypt_from(
    sender: PublicIdentity,
    recipient: Identity,
    ciphertext: bytes,
    *,
    context: EncryptionContext,
) -> bytes:
    """Decrypt a ciphertext that ``sender`` made for us with :func:`encrypt_for`.

    Raises:
        DecryptionError: the ciphertext is malformed or altered, was made by another sender or
            for another recipient, or belongs to another context.
    """
    view = memoryview(ciphertext)
    if view.nbytes < _HEADER_SIZE + _TAG_SIZE or view[0] != _VERSION:
        raise DecryptionError("not a broker-net ciphertext (too short or unknown version)")
    header = bytes(view[:_HEADER_SIZE])
    ephemeral = header[1 : 1 + _KEY_SIZE]
    try:
        shared = recipient.exchange(ephemeral) + recipient.exchange(sender.agreement_key)
        key = _derive_key(sender, recipient.public(), ephemeral, shared)
        return AESGCM(key).decrypt(
            header[-_NONCE_SIZE:], view[_HEADER_SIZE:], header + context.associated_data()
        )
    except (SecurityError, InvalidTag) as exc:
        raise DecryptionError(
            f"cannot decrypt the {context.purpose} from {sender.party_id!r} for "
            f"request {context.request_id!r}, round {context.round}, node {context.node_id!r}"
        ) from exc


def encrypt_arrays(
    recipient: PublicIdentity,
    sender: Identity,
    arrays: Mapping[str, Any],
    *,
    context: EncryptionContext,
) -> bytes:
    """Encrypt a mapping of names to numpy arrays (nested mappings allowed) for ``recipient``.

    Used for optimizer auxiliary variables and, when asked, whole parameter sets; encrypting
    them all in one call keeps them under one key and one authentication tag.

    Raises:
        CodecError: a value cannot be encoded.
    """
    return encrypt_for(recipient, sender, encode(dict(arrays)), context=context)


def decrypt_arrays(
    sender: PublicIdentity,
    recipient: Identity,
    ciphertext: bytes,
    *,
    context: EncryptionContext,
) -> dict[str, Any]:
    """Decrypt what :func:`encrypt_arrays` made; the arrays returned are read-only.

    Raises:
        DecryptionError: as for :func:`decrypt_from`.
        DecodeError: the authentic plaintext is not a mapping made by :func:`encrypt_arrays`.
    """
    plaintext = decrypt_from(sender, recipient, ciphertext, context=context)
    value = decode(plaintext)
    if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
        raise DecodeError(f"the decrypted {context.purpose} is not a mapping of names")
    return value


PAYLOAD_ALGORITHM = "x25519-hkdf-sha256-aes256gcm/v1"
"""The ``alg`` of an encrypted payload made by :func:`encrypt_payload`."""
PARAMS_PURPOSE = "params"
"""The purpose of an encrypted parameter set (``TrainRequest``/``TrainReply.params``)."""
AUX_VAR_PURPOSE = "optim_aux_var"
"""The purpose of encrypted optimizer auxiliary variables."""


def encrypt_payload(
    recipient: PublicIdentity,
    sender: Identity,
    arrays: Mapping[str, Any],
    *,
    context: EncryptionContext,
) -> dict[str, Any]:
    """Encrypt a mapping of arrays into the form a message field carries in its place:
    ``{"encrypted": ciphertext, "alg": PAYLOAD_ALGORITHM}`` (see :func:`encrypt_arrays`).

    Raises:
        CodecError: a value cannot be encoded.
    """
    ciphertext = encrypt_arrays(recipient, sender, arrays, context=context)
    return {"encrypted": ciphertext, "alg": PAYLOAD_ALGORITHM}


def is_encrypted_payload(value: Any) -> bool:
    """Whether ``value`` has the form :func:`encrypt_payload` makes."""
    return (
        isinstance(value, Mapping)
        and set(value) == {"encrypted", "alg"}
        and isinstance(value["encrypted"], bytes)
    )


def decrypt_payload(
    sender: PublicIdentity,
    recipient: Identity,
    payload: Mapping[str, Any],
    *,
    context: EncryptionContext,
) -> dict[str, Any]:
    """Decrypt what :func:`encrypt_payload` made.

    Raises:
        DecryptionError: not an encrypted payload, an unknown algorithm, or the ciphertext does
            not decrypt (altered, another sender or recipient, or another context).
    """
    if not is_encrypted_payload(payload) or payload["alg"] != PAYLOAD_ALGORITHM:
        raise DecryptionError(f"the {context.purpose} is not a {PAYLOAD_ALGORITHM} payload")
    try:
        return decrypt_arrays(sender, recipient, payload["encrypted"], context=context)
    except DecodeError as exc:
        raise DecryptionError(f"the decrypted {context.purpose} is not a mapping") from exc
