"""Encrypted training payloads on the node: open what the researcher sealed, seal the answer.

A :class:`~broker_net.messages.TrainRequest` may carry its optimizer auxiliary variables, and
with ``encrypt_params`` its parameters, encrypted for this node and bound to the experiment,
round, this node and the request id (:mod:`broker_net.crypto.payloads`): a ciphertext replayed
into another round, node or request is refused with DECRYPTION_FAILED. The node answers in
kind: an encrypted auxiliary variable gets an encrypted one back, ``encrypt_params`` encrypted
parameters, both for the researcher only. A :class:`~broker_net.prediction_messages.PredictRequest`
may carry its model's parameters encrypted the same way (:func:`open_params`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from broker_net.codes import ErrorCode
from broker_net.crypto.encryption import DecryptionError, is_encrypted_payload
from broker_net.crypto.identities import Identity, PublicIdentity, UnknownKeyError
from broker_net.crypto.payloads import PayloadBinding, PayloadField, encrypted_fields
from broker_net.messages import TrainRequest
from broker_net.prediction_messages import PredictRequest
from node_agent.context import HandlerError, NodeContext


def open_request(
    request: TrainRequest, context: NodeContext
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The request's parameters and auxiliary variables, decrypted where they are encrypted.

    Raises:
        HandlerError: DECRYPTION_FAILED when a payload does not decrypt (made for another
            round, node, request or party, or altered), or the node has no keys; BAD_ARGUMENTS
            when ``encrypt_params`` is set over plain parameters.
    """
    if request.encrypt_params and not is_encrypted_payload(request.params):
        raise HandlerError(ErrorCode.BAD_ARGUMENTS, "'encrypt_params' over plain parameters")
    opened: dict[str, dict[str, Any]] = {
        "params": dict(request.params),
        "optim_aux_var": dict(request.optim_aux_var or {}),
    }
    fields = {"params": request.params, "optim_aux_var": request.optim_aux_var}
    for field, payload in encrypted_fields(fields).items():
        if field == "params" and not request.encrypt_params:
            continue  # encrypted parameters are opened only when the request says so
        opened[field] = _open(request, context, field, payload)
    return opened["params"], opened["optim_aux_var"]


def open_params(request: PredictRequest, context: NodeContext) -> dict[str, Any]:
    """A prediction's parameters, decrypted when ``encrypt_params`` says they are encrypted.

    Raises:
        HandlerError: DECRYPTION_FAILED, or BAD_ARGUMENTS for ``encrypt_params`` over plain
            parameters.
    """
    if not request.encrypt_params:
        return dict(request.params)
    if not is_encrypted_payload(request.params):
        raise HandlerError(ErrorCode.BAD_ARGUMENTS, "'encrypt_params' over plain parameters")
    return _open(request, context, "params", request.params)


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
        fields["params"] = _seal(request, context, "params", params)
        fields["encrypted"] = True
    if is_encrypted_payload(request.optim_aux_var):
        fields["optim_aux_var"] = _seal(request, context, "optim_aux_var", aux_var)
    return fields


def _binding(request: TrainRequest | PredictRequest, context: NodeContext) -> PayloadBinding:
    return PayloadBinding(request.experiment_id, request.round, context.node_id, request.request_id)


def _open(
    request: TrainRequest | PredictRequest,
    context: NodeContext,
    field: PayloadField,
    payload: Mapping[str, Any],
) -> dict[str, Any]:
    identity, researcher = _parties(request, context)
    try:
        return _binding(request, context).open(identity, researcher, field, payload)
    except DecryptionError as exc:
        raise HandlerError(ErrorCode.DECRYPTION_FAILED, str(exc)) from exc


def _seal(
    request: TrainRequest, context: NodeContext, field: PayloadField, arrays: Mapping[str, Any]
) -> dict[str, Any]:
    identity, researcher = _parties(request, context)
    return _binding(request, context).seal(identity, researcher, field, arrays)


def _parties(
    request: TrainRequest | PredictRequest, context: NodeContext
) -> tuple[Identity, PublicIdentity]:
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
