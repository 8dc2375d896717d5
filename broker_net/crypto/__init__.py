"""Identities, authentication, encryption, introductions and secure aggregation.

What a user touches is importable from here: ``from broker_net.crypto import Security``.
:mod:`broker_net.crypto.identities` holds the keys, the trust store and the errors of every
security check; :mod:`broker_net.crypto.authentication` authenticates envelopes;
:mod:`broker_net.crypto.encryption` encrypts payloads; :mod:`broker_net.crypto.introductions`
files trust; :mod:`broker_net.crypto.secagg`, :mod:`broker_net.crypto.secagg_node`,
:mod:`broker_net.crypto.secagg_aggregator` and :mod:`broker_net.crypto.masking` make up secure
aggregation.
"""

from broker_net.crypto.authentication import Security
from broker_net.crypto.encryption import DecryptionError, EncryptionContext
from broker_net.crypto.identities import (
    BadSignatureError,
    ExpiredMessageError,
    Identity,
    KeyFileError,
    MisdirectedMessageError,
    PublicIdentity,
    ReplayedMessageError,
    SenderMismatchError,
    TrustStore,
    UnknownKeyError,
    UnsignedMessageError,
)
from broker_net.crypto.introductions import introduce, trust
from broker_net.crypto.masking import MaskedVector
from broker_net.crypto.secagg import RevealedShares, SecaggContext, SecaggError, SecaggKeys
from broker_net.crypto.secagg_aggregator import SecaggAggregator, SecaggResult
from broker_net.crypto.secagg_node import SecaggNode
from broker_net.errors import SecurityError

__all__ = [
    "BadSignatureError",
    "DecryptionError",
    "EncryptionContext",
    "ExpiredMessageError",
    "Identity",
    "KeyFileError",
    "MaskedVector",
    "MisdirectedMessageError",
    "PublicIdentity",
    "ReplayedMessageError",
    "RevealedShares",
    "SecaggAggregator",
    "SecaggContext",
    "SecaggError",
    "SecaggKeys",
    "SecaggNode",
    "SecaggResult",
    "Security",
    "SecurityError",
    "SenderMismatchError",
    "TrustStore",
    "UnknownKeyError",
    "UnsignedMessageError",
    "introduce",
    "trust",
]
