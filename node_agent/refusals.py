"""Refusals: how the node answers a message it will not run.

A message that fails authentication is answered to its claimed sender's own reply queue and
never decoded; bytes that are not an envelope, or a transfer that could not be put back
together, are answered where the AMQP properties say, or dead-lettered when they say nothing.
"""

from __future__ import annotations

import logging

from broker_net.codes import ErrorCode
from broker_net.errors import TransportError
from broker_net.frames import FrameRefused
from broker_net.message_base import utc_now
from broker_net.transport import Delivery
from node_agent.replier import ReplySender, settle_quietly

logger = logging.getLogger(__name__)


async def refuse(replier: ReplySender, delivery: Delivery, refused: FrameRefused) -> None:
    """Answer ``delivery``, which could not be used, and settle it."""
    if refused.envelope is None:
        await _refuse_unreadable(replier, delivery, refused)
    else:
        await _refuse_unauthentic(replier, delivery, refused)


async def _refuse_unauthentic(
    replier: ReplySender, delivery: Delivery, refused: FrameRefused
) -> None:
    """Answer a message that failed authentication; it is never decoded nor executed."""
    assert refused.envelope is not None
    header = refused.envelope.header
    request_id = header.request_id or delivery.correlation_id
    if request_id is None:
        await _refuse_unreadable(replier, delivery, missing_request_id())
        return
    logger.warning(
        "refused message %s claiming to come from %s: %s", header.message_id, header.sender_id,
        refused.reason,
    )  # fmt: skip
    address = replier.address(delivery, header)
    if address is None:
        await settle_quietly(delivery.reject(requeue=False))
        return
    error = replier.error(request_id, None, refused.code, refused.reason)
    error = error.model_copy(update={"replied_at": utc_now()})
    reply_header = replier.header(error, request_id, recipient=header.sender_id)
    try:
        await replier.send_refusal(address, reply_header, error)
    except TransportError as publish_error:
        logger.warning("could not answer a refused message: %s", publish_error)
    await settle_quietly(delivery.ack())


def missing_request_id() -> FrameRefused:
    """The refusal of an envelope that names no request."""
    return FrameRefused(ErrorCode.MALFORMED_MESSAGE, "the request carries no id")


async def _refuse_unreadable(
    replier: ReplySender, delivery: Delivery, refused: FrameRefused
) -> None:
    """Answer bytes that are not an envelope, if the AMQP properties say where to.

    The answer goes to the researcher whose reply queue ``reply_to`` names, authenticated for
    that researcher as any reply is, so it lands among the request's errors. With security on,
    bytes whose ``reply_to`` names no researcher's reply queue are dead-lettered, as are bytes
    without a correlation id: there is nobody to tell. With security off, the answer goes
    wherever ``reply_to`` says, as every reply does.
    """
    request_id = delivery.correlation_id
    reply_to = delivery.reply_to
    researcher = replier.topology.researcher_of(reply_to or "")
    if researcher is not None:
        reply_to = replier.topology.researcher_queue(researcher).name
    elif replier.security is not None:
        reply_to = None
    if not reply_to or not request_id:
        logger.warning(
            "dead-lettering an unreadable message without a researcher to answer: %s",
            refused.reason,
        )
        await settle_quietly(delivery.reject(requeue=False))
        return
    error = replier.error(request_id, researcher, refused.code, refused.reason)
    error = error.model_copy(update={"replied_at": utc_now()})
    header = replier.header(error, request_id, recipient=researcher or reply_to)
    try:
        await replier.send_refusal(reply_to, header, error)
    except TransportError as publish_error:
        logger.warning("could not answer an unreadable message: %s", publish_error)
        return
    await settle_quietly(delivery.ack())
