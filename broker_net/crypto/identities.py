"""Identities, explicit trust, and the errors of every security check.

Each party holds an :class:`Identity`: an Ed25519 key that signs and an X25519 key that agrees
on secrets. Its :class:`PublicIdentity` is one line of JSON, self-signed, that an operator copies
into the other side's trust file. A :class:`TrustStore` holds those lines: nothing is trusted on
first use and no key ships with the library. :mod:`broker_net.crypto.authentication` uses both
to authenticate envelopes; :mod:`broker_net.crypto.encryption` to encrypt payloads.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from broker_net.codes import ErrorCode
from broker_net.envelope import Role
from broker_net.errors import SecurityError

_IDENTITY_LABEL = b"broker-net/identity/v1\x00"
_KEY_FILE, _PUBLIC_FILE = "identity.key", "identity.pub"


class UnsignedMessageError(SecurityError):
    """Raised when a message carries no signature or MAC."""

    code: ClassVar[ErrorCode] = ErrorCode.UNSIGNED_MESSAGE


class UnknownKeyError(SecurityError):
    """Raised when a message's key, or a party, is not in the trust store."""

    code: ClassVar[ErrorCode] = ErrorCode.UNKNOWN_KEY


class BadSignatureError(SecurityError):
    """Raised when a signature or MAC does not verify, or the body does not match its digest."""

    code: ClassVar[ErrorCode] = ErrorCode.BAD_SIGNATURE


class SenderMismatchError(BadSignatureError):
    """Raised when a header claims a sender id or role other than the owner of its key."""


class ExpiredMessageError(SecurityError):
    """Raised when a message's timestamp is outside the accepted window."""

    code: ClassVar[ErrorCode] = ErrorCode.EXPIRED_MESSAGE


class ReplayedMessageError(SecurityError):
    """Raised when a message id or nonce was already accepted within the window."""

    code: ClassVar[ErrorCode] = ErrorCode.REPLAYED_MESSAGE


class MisdirectedMessageError(ReplayedMessageError):
    """Raised when an authentic message was addressed to another party."""


class KeyFileError(SecurityError):
    """Raised when a key or trust file is malformed, belongs to another party, or is too open."""

    code: ClassVar[ErrorCode] = ErrorCode.SECURITY_ERROR


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: Any, length: int, name: str) -> bytes:
    try:
        data = base64.b64decode(value, validate=True) if isinstance(value, str) else b""
    except binascii.Error:
        data = b""
    if len(data) != length:
        raise KeyFileError(f"{name!r} must be {length} bytes in base64")
    return data


def _check_party(party_id: Any, role: Any) -> None:
    if not isinstance(party_id, str) or not party_id or len(party_id) > 200:
        raise KeyFileError(f"bad party id {party_id!r}")
    if role not in ("researcher", "node"):
        raise KeyFileError(f"bad role {role!r}: expected 'researcher' or 'node'")


@dataclass(frozen=True, slots=True)
class PublicIdentity:
    """The public half of an :class:`Identity`, self-signed so that its two keys belong together.

    Usage: ``PublicIdentity.from_text(line)`` reads a line written by :meth:`to_text`.
    """

    party_id: str
    role: Role
    signing_key: bytes
    agreement_key: bytes
    signature: bytes
    fingerprint: str = field(init=False, repr=False, compare=False)
    """128 bits of the SHA-256 of the Ed25519 key, as ``ab12:cd34:...``; also the key id."""

    def __post_init__(self) -> None:
        digest = hashlib.sha256(self.signing_key).hexdigest()[:32]
        fingerprint = ":".join(digest[i : i + 4] for i in range(0, 32, 4))
        object.__setattr__(self, "fingerprint", fingerprint)

    def verify(self, data: bytes, signature: bytes) -> None:
        """Check an Ed25519 ``signature`` over ``data`` made by this party.

        Raises:
            BadSignatureError: the signature does not verify.
        """
        try:
            Ed25519PublicKey.from_public_bytes(self.signing_key).verify(signature, data)
        except (InvalidSignature, ValueError) as exc:
            raise BadSignatureError(f"bad signature from {self.party_id!r}") from exc

    def verify_self(self) -> None:
        """Check the self-signature binding the agreement key, party id and role.

        Raises:
            BadSignatureError: the identity was altered or assembled from foreign keys.
        """
        message = _identity_message(self.party_id, self.role, self.signing_key, self.agreement_key)
        self.verify(message, self.signature)

    def to_text(self) -> str:
        """Return the one-line JSON form that goes into trust files."""
        return json.dumps(
            {
                "party_id": self.party_id,
                "role": self.role,
                "ed25519": _b64(self.signing_key),
                "x25519": _b64(self.agreement_key),
                "signature": _b64(self.signature),
                "fingerprint": self.fingerprint,
            }
        )

    @classmethod
    def from_text(cls, text: str) -> PublicIdentity:
        """Parse and verify a line made by :meth:`to_text`.

        Raises:
            KeyFileError: the line is not a public identity, or its fingerprint is wrong.
            BadSignatureError: its self-signature does not verify.
        """
        try:
            fields = json.loads(text)
        except ValueError as exc:
            raise KeyFileError(f"a public identity is one line of JSON: {exc}") from exc
        if not isinstance(fields, dict):
            raise KeyFileError("a public identity is a JSON object")
        _check_party(fields.get("party_id"), fields.get("role"))
        identity = cls(
            party_id=fields["party_id"],
            role=fields["role"],
            signing_key=_unb64(fields.get("ed25519"), 32, "ed25519"),
            agreement_key=_unb64(fields.get("x25519"), 32, "x25519"),
            signature=_unb64(fields.get("signature"), 64, "signature"),
        )
        identity.verify_self()
        if fields.get("fingerprint", identity.fingerprint) != identity.fingerprint:
            raise KeyFileError(f"fingerprint of {identity.party_id!r} does not match its key")
        return identity


def _identity_message(party_id: str, role: str, signing_key: bytes, agreement_key: bytes) -> bytes:
    packed: bytes = msgpack.packb([party_id, role, signing_key, agreement_key])
    return _IDENTITY_LABEL + packed


class Identity:
    """A party's private keys: Ed25519 to sign, X25519 to agree on secrets.

    Usage: ``Identity.load_or_create(Path("~/.broker-net/keys").expanduser(), "node-1", "node")``.

    Raises:
        KeyFileError: the party id is empty or longer than 200 characters, or the role unknown.
    """

    def __init__(
        self,
        party_id: str,
        role: Role,
        signing_key: Ed25519PrivateKey,
        agreement_key: X25519PrivateKey,
    ) -> None:
        _check_party(party_id, role)
        self.party_id = party_id
        self.role: Role = role
        self._signing_key = signing_key
        self._agreement_key = agreement_key
        signing_public = signing_key.public_key().public_bytes_raw()
        agreement_public = agreement_key.public_key().public_bytes_raw()
        message = _identity_message(party_id, role, signing_public, agreement_public)
        self._public = PublicIdentity(
            party_id, role, signing_public, agreement_public, signing_key.sign(message)
        )

    @classmethod
    def generate(cls, party_id: str, role: Role) -> Identity:
        """Create an identity with fresh keys, kept in memory only."""
        return cls(party_id, role, Ed25519PrivateKey.generate(), X25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, folder: Path, party_id: str, role: Role) -> Identity:
        """Load the identity kept in ``folder``, creating its keys there on first use.

        The folder is created with mode 0700 and holds ``identity.key`` (mode 0600) and
        ``identity.pub``, the line to hand to the other parties' operators.

        Raises:
            KeyFileError: the key file is readable by group or others, is malformed, or belongs
                to another party or role.
        """
        path = folder / _KEY_FILE
        if not path.exists():
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            cls.generate(party_id, role)._write(path)
        mode = path.stat().st_mode & 0o777
        if os.name == "posix" and mode & 0o077:
            raise KeyFileError(
                f"{path} has mode {mode:#o}, readable by other users; run 'chmod 600 {path}'"
            )
        try:
            fields = json.loads(path.read_text())
            loaded = cls(
                fields["party_id"],
                fields["role"],
                Ed25519PrivateKey.from_private_bytes(_unb64(fields["ed25519"], 32, "ed25519")),
                X25519PrivateKey.from_private_bytes(_unb64(fields["x25519"], 32, "x25519")),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise KeyFileError(f"{path} is not a broker-net key file: {exc}") from exc
        if (loaded.party_id, loaded.role) != (party_id, role):
            raise KeyFileError(
                f"{path} holds the keys of {loaded.role} {loaded.party_id!r}, "
                f"not of {role} {party_id!r}"
            )
        # Written from the loaded key, which may be another process's if both started at once.
        public_path, public_line = folder / _PUBLIC_FILE, loaded.public().to_text() + "\n"
        if not public_path.exists() or public_path.read_text() != public_line:
            public_path.write_text(public_line)
        return loaded

    def _write(self, path: Path) -> None:
        fields = {
            "party_id": self.party_id,
            "role": self.role,
            "ed25519": _b64(self._signing_key.private_bytes_raw()),
            "x25519": _b64(self._agreement_key.private_bytes_raw()),
        }
        # Written under a temporary name and linked into place, so that a concurrent start
        # either wins or reads a complete file, and the key is never readable by others.
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as file:
                file.write(json.dumps(fields))
                file.flush()
                os.fsync(file.fileno())
            try:
                os.link(temporary, path)
            except FileExistsError:
                pass
        finally:
            temporary.unlink()

    @property
    def fingerprint(self) -> str:
        """The fingerprint of this identity's signing key, also its envelopes' key id."""
        return self._public.fingerprint

    def public(self) -> PublicIdentity:
        """Return the public half, to be shared with the other parties."""
        return self._public

    def sign(self, data: bytes) -> bytes:
        """Return an Ed25519 signature over ``data``."""
        return self._signing_key.sign(data)

    def exchange(self, public_key: bytes) -> bytes:
        """Return the X25519 shared secret with another party's 32-byte agreement key.

        Raises:
            BadSignatureError: the public key is malformed or of low order.
        """
        try:
            return self._agreement_key.exchange(X25519PublicKey.from_public_bytes(public_key))
        except ValueError as exc:
            raise BadSignatureError(f"unusable agreement key: {exc}") from exc


class TrustStore:
    """The public identities this party accepts messages from; nothing is trusted on first use.

    A node lists the researchers it serves, a researcher the nodes it expects. A trust file holds
    one :meth:`PublicIdentity.to_text` line per party (blank lines and ``#`` comments allowed);
    a trust folder holds such files, named ``*.pub``.
    """

    def __init__(self, identities: tuple[PublicIdentity, ...] = ()) -> None:
        self._by_party: dict[str, PublicIdentity] = {}
        self._by_key: dict[str, PublicIdentity] = {}
        for identity in identities:
            self.add(identity)

    @classmethod
    def load(cls, path: Path) -> TrustStore:
        """Read a trust file, or every ``*.pub`` file of a trust folder.

        Raises:
            KeyFileError: a line is not a public identity, or two disagree on a party's key.
            BadSignatureError: an identity's self-signature does not verify.
        """
        files = sorted(path.glob("*.pub")) if path.is_dir() else [path]
        store = cls()
        for file in files:
            for number, line in enumerate(file.read_text().splitlines(), start=1):
                if line.strip() and not line.lstrip().startswith("#"):
                    try:
                        store.add(PublicIdentity.from_text(line))
                    except SecurityError as exc:
                        raise type(exc)(f"{file}:{number}: {exc}") from exc
        return store

    def to_text(self) -> str:
        """Return the content of a trust file listing every identity in this store."""
        return "".join(f"{identity.to_text()}\n" for identity in self)

    def add(self, identity: PublicIdentity) -> None:
        """Trust ``identity``; adding the same identity twice is harmless.

        Raises:
            BadSignatureError: its self-signature does not verify.
            KeyFileError: another key is already trusted for this party; remove it first.
        """
        identity.verify_self()
        known = self._by_party.get(identity.party_id)
        if known is not None and known != identity:
            raise KeyFileError(
                f"{identity.party_id!r} is already trusted with key {known.fingerprint}, "
                f"not {identity.fingerprint}"
            )
        self._by_party[identity.party_id] = identity
        self._by_key[identity.fingerprint] = identity

    def get(self, party_id: str) -> PublicIdentity:
        """Return the trusted identity of ``party_id``.

        Raises:
            UnknownKeyError: the party is not trusted.
        """
        try:
            return self._by_party[party_id]
        except KeyError:
            raise UnknownKeyError(f"{party_id!r} is not in the trust store") from None

    def find(self, key_id: str) -> PublicIdentity | None:
        """Return the trusted identity whose fingerprint is ``key_id``, if any."""
        return self._by_key.get(key_id)

    def remove(self, party_id: str) -> None:
        """Stop trusting ``party_id``; unknown parties are ignored."""
        identity = self._by_party.pop(party_id, None)
        if identity is not None:
            del self._by_key[identity.fingerprint]

    def __contains__(self, party_id: object) -> bool:
        return party_id in self._by_party

    def __iter__(self) -> Iterator[PublicIdentity]:
        return iter(list(self._by_party.values()))

    def __len__(self) -> int:
        return len(self._by_party)
