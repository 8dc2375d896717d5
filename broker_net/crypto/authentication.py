"""Authentication of every envelope: cheap pairwise MACs, Ed25519 for broadcasts.

A message to one recipient is authenticated with HMAC-SHA256 under a pairwise key: X25519
between the two parties' agreement keys (each bound to its Ed25519 key by the self-signature
checked when it entered the trust store), then HKDF-SHA256 with both ids and fingerprints in the
info, one key per direction. A MAC costs about a microsecond where an Ed25519 verification costs
about a hundred, which matters on a one-millisecond round trip. Messages to every party
(heartbeats) carry an Ed25519 signature instead. Either way the header holds the body's SHA-256,
so one check covers header and body before anything decodes the body.
"""

from __future__ import annotations

import heapq
import hmac
import math
import time
from collections.abc import Callable
from pathlib import Path

import msgpack
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from broker_net.crypto.identities import (
    BadSignatureError,
    ExpiredMessageError,
    Identity,
    MisdirectedMessageError,
    PublicIdentity,
    ReplayedMessageError,
    SenderMismatchError,
    TrustStore,
    UnknownKeyError,
    UnsignedMessageError,
)
from broker_net.envelope import Authenticator, Envelope, Role
from broker_net.errors import SecurityError

MAC_ALGORITHM = "hmac-sha256-x25519"
"""``auth_alg`` of envelopes MACed under a pairwise key."""
SIGNATURE_ALGORITHM = "ed25519"
"""``auth_alg`` of envelopes signed for many recipients."""
BROADCAST = "*"
"""The recipient of a message meant for every party, such as a heartbeat."""
DEFAULT_WINDOW = 300.0
"""Seconds a message's timestamp may differ from the verifier's clock."""

_MAC_LABEL = b"broker-net/mac/v1"
_ReplayKey = tuple[str, str, str | bytes]


def _mac_key(own: Identity, peer: PublicIdentity, *, outgoing: bool) -> bytes:
    # One key per direction: a MAC made for A -> B never verifies as B -> A.
    sender, recipient = (own.public(), peer) if outgoing else (peer, own.public())
    info = _MAC_LABEL + msgpack.packb(
        [sender.party_id, sender.fingerprint, recipient.party_id, recipient.fingerprint]
    )
    secret = own.exchange(peer.agreement_key)
    return HKDF(SHA256(), 32, salt=_MAC_LABEL, info=info).derive(secret)


class MacAuthenticator:
    """Authenticates envelopes to one recipient with HMAC-SHA256 under a pairwise key."""

    __slots__ = ("_key", "algorithm", "key_id")

    def __init__(self, key_id: str, key: bytes) -> None:
        self.algorithm = MAC_ALGORITHM
        self.key_id = key_id
        self._key = key

    def sign(self, header_bytes: bytes) -> bytes:
        """Return the HMAC-SHA256 of the header's exact bytes."""
        return hmac.digest(self._key, header_bytes, "sha256")


class SignatureAuthenticator:
    """Authenticates envelopes to many recipients with an Ed25519 signature."""

    __slots__ = ("_identity", "algorithm", "key_id")

    def __init__(self, identity: Identity) -> None:
        self.algorithm = SIGNATURE_ALGORITHM
        self.key_id = identity.fingerprint
        self._identity = identity

    def sign(self, header_bytes: bytes) -> bytes:
        """Return the Ed25519 signature of the header's exact bytes."""
        return self._identity.sign(header_bytes)


class Authenticators:
    """Gives the authenticator for each recipient, deriving each pairwise key once.

    Usage: ``seal(header, message, authenticator=authenticators.for_recipient(header.recipient))``.
    """

    def __init__(self, identity: Identity, trust: TrustStore) -> None:
        self._identity = identity
        self._trust = trust
        self._macs: dict[str, MacAuthenticator] = {}
        self.signer = SignatureAuthenticator(identity)
        """The Ed25519 authenticator, for broadcasts."""

    def for_recipient(self, recipient: str) -> Authenticator:
        """A MAC authenticator for a trusted party, the signer for :data:`BROADCAST`.

        Raises:
            UnknownKeyError: ``recipient`` is not in the trust store.
        """
        if recipient == BROADCAST:
            return self.signer
        peer = self._trust.get(recipient)
        authenticator = self._macs.get(peer.fingerprint)
        if authenticator is None:
            key = _mac_key(self._identity, peer, outgoing=True)
            authenticator = self._macs[peer.fingerprint] = MacAuthenticator(
                self._identity.fingerprint, key
            )
        return authenticator


class Verifier:
    """Checks that an envelope comes from a trusted party, intact, recent and new.

    The checks run in this order, each with its own exception: a signature or MAC is present;
    its key is trusted and belongs to the claimed sender; it verifies over the header, and the
    body matches the header's digest; the message is addressed to this party; its timestamp is
    within ``window`` seconds of ``clock()``; its id and nonce were not accepted before. Nothing
    in this class decodes the body.

    Args:
        identity: this party.
        trust: the parties it accepts messages from.
        window: seconds a timestamp may be ahead of or behind the local clock.
        max_entries: bound of the replay cache (two entries per message). When it is full the
            oldest entries are dropped and messages no newer than them are refused as expired.
        clock: the time source, in seconds since the epoch.

    Raises:
        ValueError: ``window`` is not positive or ``max_entries`` is below 2.
    """

    def __init__(
        self,
        identity: Identity,
        trust: TrustStore,
        *,
        window: float = DEFAULT_WINDOW,
        max_entries: int = 1_000_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._identity = identity
        if window <= 0 or max_entries < 2:
            raise ValueError("the window must be positive and the replay cache hold 2 entries")
        self._trust = trust
        self._window = window
        self._max_entries = max_entries
        self._clock = clock
        self._mac_keys: dict[str, bytes] = {}
        self._seen: dict[_ReplayKey, float] = {}
        self._expiries: list[tuple[float, _ReplayKey]] = []
        self._floor = -math.inf

    def use_trust(self, trust: TrustStore) -> None:
        """Verify against ``trust`` from now on, keeping the replay cache."""
        self._trust = trust
        self._mac_keys.clear()

    def verify(self, envelope: Envelope) -> PublicIdentity:
        """Return the trusted identity of the envelope's sender, or refuse the envelope.

        Raises:
            UnsignedMessageError: no signature or MAC.
            UnknownKeyError: the key id is not in the trust store.
            SenderMismatchError: the header's sender id or role is not the key's owner.
            BadSignatureError: the signature or MAC is wrong, or the body was altered.
            MisdirectedMessageError: the message is addressed to another party.
            ExpiredMessageError: the timestamp is outside the window.
            ReplayedMessageError: the message id or nonce was seen before.
        """
        header = envelope.header
        if envelope.auth is None or header.auth_alg is None or header.key_id is None:
            raise UnsignedMessageError(f"unsigned {header.message_type} from {header.sender_id!r}")
        sender = self._trust.find(header.key_id)
        if sender is None:
            raise UnknownKeyError(
                f"{header.sender_id!r} signed with key {header.key_id!r}, which is not trusted"
            )
        if sender.party_id != header.sender_id or sender.role != header.sender_role:
            raise SenderMismatchError(
                f"key {sender.fingerprint} belongs to {sender.role} {sender.party_id!r}, "
                f"not to {header.sender_role} {header.sender_id!r}"
            )
        self._check_auth(envelope, sender)
        if not envelope.body_digest_matches():
            raise BadSignatureError(f"body of {header.message_id} does not match its digest")
        me = self._identity.party_id
        if header.recipient != me and not (
            header.recipient == BROADCAST and header.auth_alg == SIGNATURE_ALGORITHM
        ):
            raise MisdirectedMessageError(
                f"{header.message_id} is addressed to {header.recipient!r}"
            )
        self._check_fresh(header.sender_id, header.message_id, header.nonce, header.created_at)
        return sender

    def _check_auth(self, envelope: Envelope, sender: PublicIdentity) -> None:
        alg = envelope.header.auth_alg
        auth = envelope.auth or b""
        if alg == MAC_ALGORITHM:
            key = self._mac_keys.get(sender.fingerprint)
            if key is None:
                key = self._mac_keys[sender.fingerprint] = _mac_key(
                    self._identity, sender, outgoing=False
                )
            expected = hmac.digest(key, envelope.header_bytes, "sha256")
            if not hmac.compare_digest(expected, auth):
                raise BadSignatureError(f"bad MAC from {sender.party_id!r}")
        elif alg == SIGNATURE_ALGORITHM:
            sender.verify(envelope.header_bytes, auth)
        else:
            raise BadSignatureError(f"unsupported authentication algorithm {alg!r}")

    def _check_fresh(self, sender_id: str, message_id: str, nonce: bytes, created: float) -> None:
        now = self._clock()
        if not math.isfinite(created) or abs(now - created) > self._window:
            raise ExpiredMessageError(
                f"{message_id} was created {now - created:.0f} s ago, outside ±{self._window:.0f} s"
            )
        expiry = created + self._window
        if expiry <= self._floor:
            raise ExpiredMessageError(f"{message_id} is older than the replay cache remembers")
        while self._expiries and self._expiries[0][0] < now:
            del self._seen[heapq.heappop(self._expiries)[1]]
        keys = ((sender_id, "id", message_id), (sender_id, "nonce", nonce))
        if keys[0] in self._seen or keys[1] in self._seen:
            raise ReplayedMessageError(f"{message_id} from {sender_id!r} was already accepted")
        for key in keys:
            self._seen[key] = expiry
            heapq.heappush(self._expiries, (expiry, key))
        while len(self._seen) > self._max_entries:
            dropped_expiry, dropped = heapq.heappop(self._expiries)
            del self._seen[dropped]
            self._floor = max(self._floor, dropped_expiry)


class Security:
    """One party's identity, the parties it trusts, and the checks on every envelope.

    Args:
        identity: this party's keys.
        trust: the parties this one accepts messages from and sends authenticated messages to.
        window: seconds a message's timestamp may differ from this party's clock.
    """

    def __init__(
        self,
        identity: Identity,
        trust: TrustStore,
        *,
        window: float = DEFAULT_WINDOW,
        trusted_path: Path | None = None,
    ):
        self.identity = identity
        self.trust = trust
        self.trusted_path = trusted_path
        self._reloaded_at = 0.0
        self.authenticators = Authenticators(identity, trust)
        self.verifier = Verifier(identity, trust, window=window)
        self.refused: dict[str, int] = {}
        """How many envelopes were refused, by reason (the error class name)."""

    @classmethod
    def load(
        cls,
        identity_dir: Path,
        party_id: str,
        role: Role,
        trusted: Path,
        *,
        window: float = DEFAULT_WINDOW,
    ) -> Security:
        """Load (creating on first use) the identity in ``identity_dir`` and the trust file or
        folder ``trusted`` (an absent one trusts nobody: there is no trust on first use).

        Raises:
            KeyFileError: a key or trust file is unsafe or malformed.
        """
        identity = Identity.load_or_create(identity_dir, party_id, role)
        trust = TrustStore.load(trusted) if trusted.exists() else TrustStore()
        return cls(identity, trust, window=window, trusted_path=trusted)

    def reload_trust(self) -> bool:
        """Read the trust file or folder again, so an operator who adds a party's ``.pub``
        file needs no restart. At most once a second; True when the store changed."""
        now = time.monotonic()
        if self.trusted_path is None or now - self._reloaded_at < 1.0:
            return False
        self._reloaded_at = now
        if not self.trusted_path.exists():
            return False
        fresh = TrustStore.load(self.trusted_path)
        if fresh.to_text() == self.trust.to_text():
            return False
        self.trust = fresh
        self.authenticators = Authenticators(self.identity, fresh)
        self.verifier.use_trust(fresh)
        return True

    def authenticator_for(self, recipient: str) -> Authenticator:
        """A MAC for a trusted recipient; the Ed25519 signer for broadcasts and for parties
        outside the trust store (whose answers, such as refusals, stay verifiable)."""
        try:
            return self.authenticators.for_recipient(recipient)
        except UnknownKeyError:
            if self.reload_trust():
                return self.authenticator_for(recipient)
            return self.authenticators.signer

    def verify(self, envelope: Envelope) -> PublicIdentity:
        """Verify an envelope before its body is decoded, counting refusals.

        Raises:
            SecurityError: a subclass naming why, with its ``code``.
        """
        try:
            try:
                return self.verifier.verify(envelope)
            except UnknownKeyError:
                if not self.reload_trust():
                    raise
                return self.verifier.verify(envelope)
        except SecurityError as exc:
            reason = type(exc).__name__
            self.refused[reason] = self.refused.get(reason, 0) + 1
            raise
