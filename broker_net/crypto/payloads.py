"""Training payloads encrypted between the two parties, the same way on both sides.

A :class:`~broker_net.messages.TrainRequest` may carry its ``params`` and ``optim_aux_var``
encrypted for its node, and the :class:`~broker_net.messages.TrainReply` its updated ones
encrypted for the researcher. Every such payload is bound to the experiment, the round, the
node and the request id (:class:`PayloadBinding`): a ciphertext replayed into another round,
node or request, or moved to the other field, does not decrypt.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from broker_net.crypto.encryption import (
    AUX_VAR_PURPOSE,
    PARAMS_PURPOSE,
    EncryptionContext,
    decrypt_payload,
    encrypt_payload,
    is_encrypted_payload,
)
from broker_net.crypto.identities import Identity, PublicIdentity

PayloadField: TypeAlias = Literal["params", "optim_aux_var"]
"""The message fields that may travel encrypted."""

PAYLOAD_FIELDS: tuple[PayloadField, ...] = ("params", "optim_aux_var")

_PURPOSES: dict[PayloadField, str] = {"params": PARAMS_PURPOSE, "optim_aux_var": AUX_VAR_PURPOSE}


@dataclass(frozen=True, slots=True)
class PayloadBinding:
    """What a training payload is bound to, in either direction.

    Attributes:
        experiment_id: the experiment of the request.
        round: its training round.
        node_id: the node the payload goes to or comes from.
        request_id: the request carrying it (or answered by it).
    """

    experiment_id: str
    round: int
    node_id: str
    request_id: str

    def context(self, field: PayloadField) -> EncryptionContext:
        """The encryption context of ``field``'s payload."""
        return EncryptionContext(
            self.experiment_id, self.round, self.node_id, self.request_id, _PURPOSES[field]
        )

    def seal(
        self,
        sender: Identity,
        recipient: PublicIdentity,
        field: PayloadField,
        arrays: Mapping[str, Any],
    ) -> dict[str, Any]:
        """``arrays`` encrypted from ``sender`` for ``recipient``, to travel as ``field``."""
        return encrypt_payload(recipient, sender, arrays, context=self.context(field))

    def open(
        self,
        recipient: Identity,
        sender: PublicIdentity,
        field: PayloadField,
        payload: Mapping[str, Any],
    ) -> dict[str, Any]:
        """The arrays of ``field``'s encrypted ``payload``.

        Raises:
            DecryptionError: it was made for another binding or party, or altered.
        """
        return decrypt_payload(sender, recipient, payload, context=self.context(field))


def encrypted_fields(fields: Mapping[str, Any]) -> dict[PayloadField, Mapping[str, Any]]:
    """The payload fields among ``fields`` (a message's, by name) that travel encrypted."""
    return {
        name: fields[name]
        for name in PAYLOAD_FIELDS
        if name in fields and is_encrypted_payload(fields[name])
    }
