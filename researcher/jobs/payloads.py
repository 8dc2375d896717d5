"""Encrypted training payloads on the researcher's side: seal requests, open replies.

:func:`seal_request` encrypts a :class:`~broker_net.messages.TrainRequest`'s optimizer
auxiliary variables, and on demand its parameters, for the one node it goes to, bound to the
experiment, round, node and request id (:mod:`broker_net.crypto.payloads`). The request id
must therefore be chosen before sending. :func:`open_reply` decrypts what the node encrypted in
return; a payload made for another round, node or request fails to decrypt.
"""

from __future__ import annotations

from typing import Any

from broker_net.crypto.authentication import Security
from broker_net.crypto.encryption import DecryptionError, is_encrypted_payload
from broker_net.crypto.identities import UnknownKeyError
from broker_net.crypto.payloads import PayloadBinding, encrypted_fields
from broker_net.messages import TrainReply, TrainRequest


def seal_request(
    message: TrainRequest,
    node: str,
    security: Security,
    *,
    request_id: str,
    encrypt_params: bool = False,
    encrypt_aux_var: bool = False,
) -> TrainRequest:
    """A copy of ``message`` for ``node`` under ``request_id``, its payloads encrypted.

    With ``encrypt_aux_var`` the auxiliary variables are encrypted (an empty mapping when
    there are none, so that the node encrypts its own in return); ones already encrypted are
    kept as they are. With ``encrypt_params`` the parameters are encrypted and
    ``encrypt_params`` is set, so the node encrypts its updated parameters too.

    Raises:
        UnknownKeyError: ``node`` is not in the researcher's trust store.
    """
    recipient = security.trust.get(node)
    binding = PayloadBinding(message.experiment_id, message.round, node, request_id)
    update: dict[str, Any] = {"request_id": request_id}
    if encrypt_params:
        update["params"] = binding.seal(security.identity, recipient, "params", message.params)
        update["encrypt_params"] = True
    if encrypt_aux_var and not is_encrypted_payload(message.optim_aux_var):
        update["optim_aux_var"] = binding.seal(
            security.identity, recipient, "optim_aux_var", message.optim_aux_var or {}
        )
    return message.model_copy(update=update)


def open_reply(
    reply: TrainReply,
    security: Security | None,
    *,
    experiment_id: str,
    round: int,
    request_id: str,
) -> TrainReply:
    """``reply`` with its encrypted parameters and auxiliary variables decrypted.

    The binding is the one the researcher asked for (``experiment_id``, ``round``,
    ``request_id`` and the replying node), not what the reply claims. Masked parameters of
    secure aggregation are left as they are.

    Raises:
        DecryptionError: a payload does not decrypt, or the researcher has no keys.
    """
    encrypted = encrypted_fields({"params": reply.params, "optim_aux_var": reply.optim_aux_var})
    if not encrypted:
        return reply
    if security is None:
        raise DecryptionError("the reply is encrypted and this researcher runs without security")
    try:
        sender = security.trust.get(reply.node_id)
    except UnknownKeyError as exc:
        raise DecryptionError(str(exc)) from exc
    binding = PayloadBinding(experiment_id, round, reply.node_id, request_id)
    update: dict[str, Any] = {
        field: binding.open(security.identity, sender, field, payload)
        for field, payload in encrypted.items()
    }
    if "params" in update:
        update["encrypted"] = False
    return reply.model_copy(update=update)
