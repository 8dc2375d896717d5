"""Envelope authentication: every kind of forgery is refused with its own error and code.

Envelopes are sealed with the real authenticators, altered as bytes on the wire, then unsealed
and verified, as a node agent or a researcher would.
"""

from __future__ import annotations

import dataclasses
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker_net.codes import ErrorCode
from broker_net.crypto.authentication import (
    BROADCAST,
    MAC_ALGORITHM,
    SIGNATURE_ALGORITHM,
    Authenticators,
    MacAuthenticator,
    Verifier,
)
from broker_net.crypto.identities import (
    BadSignatureError,
    ExpiredMessageError,
    Identity,
    MisdirectedMessageError,
    ReplayedMessageError,
    SenderMismatchError,
    TrustStore,
    UnknownKeyError,
    UnsignedMessageError,
)
from broker_net.envelope import Authenticator, EnvelopeHeader, seal, seal_parts, unseal
from broker_net.errors import EnvelopeError, SecurityError
from broker_net.messages import Heartbeat, PingRequest

NOW = 1_800_000_000.0
RESEARCHER = Identity.generate("lab", "researcher")
NODE = Identity.generate("hospital-a", "node")
OTHER_NODE = Identity.generate("hospital-b", "node")
IMPOSTOR = Identity.generate("hospital-a", "node")


class _ForgedSigner:
    """Signs with one key while claiming another's key id."""

    algorithm = SIGNATURE_ALGORITHM

    def __init__(self, signer: Identity, claimed: Identity) -> None:
        self.key_id = claimed.fingerprint
        self._signer = signer

    def sign(self, header_bytes: bytes) -> bytes:
        return self._signer.sign(header_bytes)


def _researcher_side() -> Authenticators:
    trust = TrustStore((NODE.public(), OTHER_NODE.public()))
    return Authenticators(RESEARCHER, trust)


def _node_verifier(clock: float = NOW, **options: float) -> Verifier:
    trust = TrustStore((RESEARCHER.public(),))
    return Verifier(NODE, trust, clock=lambda: clock, **options)  # type: ignore[arg-type]


def _header(recipient: str = "hospital-a", **changes: object) -> EnvelopeHeader:
    header = EnvelopeHeader.for_message(
        PingRequest(researcher_id="lab"),
        sender_id="lab",
        sender_role="researcher",
        recipient=recipient,
    )
    return dataclasses.replace(header, **({"created_at": NOW} | changes))  # type: ignore[arg-type]


def _sealed(authenticator: Authenticator | None, **changes: object) -> bytes:
    header = _header(**changes)  # type: ignore[arg-type]
    return seal(header, PingRequest(researcher_id="lab"), authenticator=authenticator)


def _mac() -> Authenticator:
    return _researcher_side().for_recipient("hospital-a")


def _flip(data: bytes, index: int, mask: int = 0x01) -> bytes:
    return data[:index] + bytes([data[index] ^ mask]) + data[index + 1 :]


def _refusal(verifier: Verifier, data: bytes) -> SecurityError:
    with pytest.raises(SecurityError) as caught:
        verifier.verify(unseal(data))
    return caught.value


# --- accepted ----------------------------------------------------------------------------------


def test_mac_authenticated_request_is_accepted() -> None:
    envelope = unseal(_sealed(_mac()))

    assert envelope.header.auth_alg == MAC_ALGORITHM
    assert envelope.header.key_id == RESEARCHER.fingerprint
    assert _node_verifier().verify(envelope) == RESEARCHER.public()


def test_reply_is_authenticated_under_the_other_direction_key() -> None:
    node_side = Authenticators(NODE, TrustStore((RESEARCHER.public(),)))
    header = EnvelopeHeader.for_message(
        PingRequest(researcher_id="lab"),
        sender_id="hospital-a",
        sender_role="node",
        recipient="lab",
    )
    data = seal(
        header, PingRequest(researcher_id="lab"), authenticator=node_side.for_recipient("lab")
    )
    researcher = Verifier(RESEARCHER, TrustStore((NODE.public(), OTHER_NODE.public())))

    assert researcher.verify(unseal(data)) == NODE.public()
    assert node_side.for_recipient("lab").sign(b"x") != _mac().sign(b"x")


def test_signed_broadcast_is_accepted_by_every_party() -> None:
    node_side = Authenticators(NODE, TrustStore((RESEARCHER.public(),)))
    heartbeat = Heartbeat(node_id="hospital-a", interval=5.0)
    header = EnvelopeHeader.for_message(
        heartbeat, sender_id="hospital-a", sender_role="node", recipient=BROADCAST
    )
    data = seal(header, heartbeat, authenticator=node_side.for_recipient(BROADCAST))
    researcher = Verifier(RESEARCHER, TrustStore((NODE.public(),)))

    assert unseal(data).header.auth_alg == SIGNATURE_ALGORITHM
    assert researcher.verify(unseal(data)) == NODE.public()


def test_verification_never_decodes_the_body() -> None:
    header = _header()
    not_msgpack = [b"\xc1\xc1\xc1 this is not msgpack"]
    data = b"".join(seal_parts(header, list(not_msgpack), authenticator=_mac()))

    assert _node_verifier().verify(unseal(data)) == RESEARCHER.public()


def test_pairwise_keys_are_derived_once_per_peer() -> None:
    authenticators = _researcher_side()

    assert authenticators.for_recipient("hospital-a") is authenticators.for_recipient("hospital-a")
    assert authenticators.for_recipient("hospital-a") is not authenticators.for_recipient(
        "hospital-b"
    )
    assert authenticators.for_recipient(BROADCAST) is authenticators.signer


def test_no_authenticator_for_an_untrusted_recipient() -> None:
    with pytest.raises(UnknownKeyError):
        _researcher_side().for_recipient("hospital-z")


# --- refused -----------------------------------------------------------------------------------


def test_unsigned_message_is_refused() -> None:
    error = _refusal(_node_verifier(), _sealed(None))

    assert isinstance(error, UnsignedMessageError)
    assert error.code is ErrorCode.UNSIGNED_MESSAGE


def test_tampered_header_byte_is_refused() -> None:
    data = _sealed(_mac())
    header = unseal(data).header
    index = data.index(header.message_id.encode()) + len(header.message_id) - 1

    error = _refusal(_node_verifier(), _flip(data, index))

    assert isinstance(error, BadSignatureError)
    assert error.code is ErrorCode.BAD_SIGNATURE


def test_tampered_body_byte_is_refused() -> None:
    data = _sealed(_mac())

    error = _refusal(_node_verifier(), _flip(data, len(data) - 1))

    assert type(error) is BadSignatureError
    assert "digest" in str(error)


def test_tampered_mac_is_refused() -> None:
    data = _sealed(_mac())
    mac = unseal(data).auth
    assert mac is not None

    error = _refusal(_node_verifier(), _flip(data, data.index(mac)))

    assert type(error) is BadSignatureError


@pytest.mark.parametrize(
    "authenticator",
    [
        MacAuthenticator(RESEARCHER.fingerprint, os.urandom(32)),
        _ForgedSigner(Identity.generate("lab", "researcher"), RESEARCHER),
    ],
    ids=["mac", "ed25519"],
)
def test_wrong_key_is_refused(authenticator: Authenticator) -> None:
    error = _refusal(_node_verifier(), _sealed(authenticator))

    assert type(error) is BadSignatureError
    assert error.code is ErrorCode.BAD_SIGNATURE


def test_unknown_sender_is_refused() -> None:
    stranger = Identity.generate("lab", "researcher")
    authenticator = Authenticators(stranger, TrustStore((NODE.public(),))).for_recipient(
        "hospital-a"
    )

    error = _refusal(_node_verifier(), _sealed(authenticator))

    assert isinstance(error, UnknownKeyError)
    assert error.code is ErrorCode.UNKNOWN_KEY


def test_sender_id_that_does_not_match_the_key_is_refused() -> None:
    # hospital-b signs correctly with its own key but claims to be hospital-a.
    researcher = Verifier(RESEARCHER, TrustStore((NODE.public(), OTHER_NODE.public())))
    authenticator = Authenticators(OTHER_NODE, TrustStore((RESEARCHER.public(),))).for_recipient(
        "lab"
    )
    header = EnvelopeHeader.for_message(
        PingRequest(researcher_id="lab"),
        sender_id="hospital-a",
        sender_role="node",
        recipient="lab",
    )
    data = seal(header, PingRequest(researcher_id="lab"), authenticator=authenticator)

    error = _refusal(researcher, data)

    assert isinstance(error, SenderMismatchError)
    assert error.code is ErrorCode.BAD_SIGNATURE


def test_sender_role_that_does_not_match_the_key_is_refused() -> None:
    error = _refusal(_node_verifier(), _sealed(_mac(), sender_role="node"))

    assert isinstance(error, SenderMismatchError)


def test_message_for_another_node_is_refused() -> None:
    for_other = _sealed(_researcher_side().for_recipient("hospital-b"), recipient="hospital-b")
    signed_for_other = _sealed(_researcher_side().signer, recipient="hospital-b")

    # A MAC made for hospital-b does not even verify at hospital-a.
    assert type(_refusal(_node_verifier(), for_other)) is BadSignatureError
    error = _refusal(_node_verifier(), signed_for_other)
    assert isinstance(error, MisdirectedMessageError)
    assert error.code is ErrorCode.REPLAYED_MESSAGE


def test_broadcast_must_be_signed_not_maced() -> None:
    error = _refusal(_node_verifier(), _sealed(_mac(), recipient=BROADCAST))

    assert isinstance(error, MisdirectedMessageError)


def test_reflected_message_is_refused() -> None:
    data = _sealed(_mac())
    researcher = Verifier(RESEARCHER, TrustStore((NODE.public(),)))

    assert isinstance(_refusal(researcher, data), UnknownKeyError)


@pytest.mark.parametrize("offset", [-300.5, 300.5, -86400.0, 1e12, float("nan"), float("inf")])
def test_message_outside_the_window_is_refused(offset: float) -> None:
    error = _refusal(_node_verifier(), _sealed(_mac(), created_at=NOW + offset))

    assert isinstance(error, ExpiredMessageError)
    assert error.code is ErrorCode.EXPIRED_MESSAGE


@given(st.floats(min_value=-299.0, max_value=299.0))
def test_message_inside_the_window_is_accepted(offset: float) -> None:
    assert _node_verifier().verify(unseal(_sealed(_mac(), created_at=NOW + offset)))


def test_window_is_configurable() -> None:
    verifier = _node_verifier(window=5.0)

    verifier.verify(unseal(_sealed(_mac(), created_at=NOW - 4.0)))
    assert isinstance(
        _refusal(verifier, _sealed(_mac(), created_at=NOW - 6.0)), ExpiredMessageError
    )


def test_replayed_message_is_refused() -> None:
    verifier = _node_verifier()
    data = _sealed(_mac())
    verifier.verify(unseal(data))

    error = _refusal(verifier, data)

    assert isinstance(error, ReplayedMessageError)
    assert error.code is ErrorCode.REPLAYED_MESSAGE


def test_reused_nonce_is_refused() -> None:
    verifier = _node_verifier()
    nonce = os.urandom(16)
    verifier.verify(unseal(_sealed(_mac(), nonce=nonce)))

    assert isinstance(_refusal(verifier, _sealed(_mac(), nonce=nonce)), ReplayedMessageError)


def test_refused_messages_do_not_enter_the_replay_cache() -> None:
    verifier = _node_verifier()
    data = _sealed(_mac())
    _refusal(verifier, _flip(data, len(data) - 1))

    assert verifier.verify(unseal(data)) == RESEARCHER.public()


def test_a_full_replay_cache_never_lets_a_replay_through() -> None:
    verifier = _node_verifier(max_entries=4)
    first = _sealed(_mac(), created_at=NOW - 2)
    for data in (first, _sealed(_mac(), created_at=NOW - 1), _sealed(_mac(), created_at=NOW)):
        verifier.verify(unseal(data))

    # The first message was forgotten to keep the cache bounded, so everything as old is refused.
    assert isinstance(_refusal(verifier, first), ExpiredMessageError)
    assert isinstance(_refusal(verifier, _sealed(_mac(), created_at=NOW - 3)), ExpiredMessageError)
    verifier.verify(unseal(_sealed(_mac(), created_at=NOW + 1)))


@pytest.mark.parametrize("options", [{"window": 0.0}, {"max_entries": 1}])
def test_verifier_refuses_unusable_settings(options: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        _node_verifier(**options)


@given(st.data())
def test_any_flipped_byte_is_refused(data: st.DataObject) -> None:
    wire = _sealed(_mac())
    index = data.draw(st.integers(0, len(wire) - 1))
    mask = data.draw(st.integers(1, 255))

    with pytest.raises((EnvelopeError, SecurityError)):
        _node_verifier().verify(unseal(_flip(wire, index, mask)))
