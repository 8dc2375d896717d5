"""Encrypted training payloads on the node: open what the researcher sealed, seal the answer.

A :class:`~broker_net.messages.TrainRequest` may carry its optimizer auxiliary variables, and
with ``encrypt_params`` its parameters, encrypted for this node
(:func:`broker_net.crypto.encryption.encrypt_payload`). Each is bound to the experiment, round, this
node and the request id: a ciphertext replayed into another round, node or request is refused
with DECRYPTION_FAILED. The node answers in kind: an encrypted auxiliary variable gets an
encrypted one back, ``encrypt_params`` encrypted parameters, both for the researcher only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from broker_net.codes import ErrorCode
from broker_net.crypto.encryption import (
    AUX_VAR_PURPOSE,
    PARAMS_PURPOSE,
    DecryptionError,
    EncryptionContext,
    decrypt_payload,
    encrypt_payload,
    is_encrypted_payload,
)
from broker_net.crypto.identities import Identity, PublicIdentity, UnknownKeyError
from broker_net.messages import TrainRequest
from node_agent.context import HandlerError, NodeContext


def payload_context(request: TrainRequest, node_id: str, purpose: str) -> EncryptionContext:
    """What a payload of ``request`` is bound to, in either direction."""
    return EncryptionContext(
        request.experiment_id, request.round, node_id, request.request_id, purpose=purpose
    )


def _parties(request: TrainRequest, context: NodeContext) -> tuple[Identity, PublicIdentity]:
    if context.security is None:
        raise HandlerError(
            ErrorCode.DECRYPTION_FAILED,
            "this node runs without security and holds no key to decrypt or encrypt payloads",
        )
    try:
        researcher = context.security.trust.get(request.researcher_id)
    except UnknownKeyError as exc:
        raise HandlerError(ErrorCode.UNKNOWN_KEY, str(exc)) from exc
    return context.security.identity, researcher


def open_request(
    request: TrainRequest, context: NodeContext
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The request's parameters and auxiliary variables, decrypted where they are encrypted.

    Raises:
        HandlerError: DECRYPTION_FAILED when a payload does not decrypt (made for another
            round, node, request or party, or altered), or the node has no keys; BAD_ARGUMENTS
            when ``encrypt_params`` is set over plain parameters.
    """
    params: dict[str, Any] = dict(request.params)
    aux_var: dict[str, Any] = dict(request.optim_aux_var or {})
    if request.encrypt_params:
        if not is_encrypted_payload(request.params):
            raise HandlerError(ErrorCode.BAD_ARGUMENTS, "'encrypt_params' over plain parameters")
        params = _decrypt(request, context, request.params, PARAMS_PURPOSE)
    if is_encrypted_payload(aux_var):
        aux_var = _decrypt(request, context, aux_var, AUX_VAR_PURPOSE)
    return params, aux_var


def _decrypt(
    request: TrainRequest, context: NodeContext, payload: Mapping[str, Any], purpose: str
) -> dict[str, Any]:
    identity, researcher = _parties(request, context)
    bound = payload_context(request, context.node_id, purpose)
    try:
        return decrypt_payload(researcher, identity, payload, context=bound)
    except DecryptionError as exc:
        raise HandlerError(ErrorCode.DECRYPTION_FAILED, str(exc)) from exc


def seal_reply(
    request: TrainRequest,
    context: NodeContext,
    params: Mapping[str, Any],
    aux_var: Mapping[str, Any],
) -> dict[str, Any]:
    """The ``params``, ``optim_aux_var`` and ``encrypted`` fields of the reply to ``request``:
    encrypted for the researcher where the request asked for it, plain otherwise.

    Raises:
        HandlerError: DECRYPTION_FAILED or UNKNOWN_KEY when the node cannot encrypt.
    """
    fields: dict[str, Any] = {"params": dict(params), "optim_aux_var": dict(aux_var) or None}
    if request.encrypt_params:
        fields["params"] = _encrypt(request, context, params, PARAMS_PURPOSE)
        fields["encrypted"] = True
    if is_encrypted_payload(request.optim_aux_var):
        fields["optim_aux_var"] = _encrypt(request, context, aux_var, AUX_VAR_PURPOSE)
    return fields


def _encrypt(
    request: TrainRequest, context: NodeContext, arrays: Mapping[str, Any], purpose: str
) -> dict[str, Any]:
    identity, researcher = _parties(request, context)
    bound = payload_context(request, context.node_id, purpose)
    return encrypt_payload(researcher, identity, arrays, context=bound)
