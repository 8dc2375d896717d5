"""The broker as a command sees it: connect, notice when it is gone, say so in one line.

:func:`broker_connection` opens an :class:`~broker_net.amqp.transport.AmqpTransport` for a
command. A broker that cannot be reached, or refuses the login, is a
:class:`~broker_net.cli_errors.CliError` naming the URL (password masked) and the setting to
check; so is a broker lost mid-command: with ``patience`` set, a connection that stays down
that long ends the command, instead of letting it wait on a broker that is not coming back.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, nullcontext
from urllib.parse import unquote, urlparse

import anyio

from broker_net.amqp.failover import broker_urls, redact
from broker_net.amqp.transport import AmqpTransport
from broker_net.cli_errors import CliError, first_error, quiet_broker_clients
from broker_net.errors import BrokerAccessError, TransportError

WATCH_INTERVAL = 0.1
"""Seconds between two looks at the connection."""


@asynccontextmanager
async def broker_connection(
    url: str, *, name: str, setting: str, patience: float | None = None, quiet: bool = False
) -> AsyncIterator[AmqpTransport]:
    """A connected transport for a command.

    Args:
        url: the broker URL (or list of URLs).
        name: the connection's name in the management UI.
        setting: the environment variable (or option) that sets ``url``, named in errors.
        patience: seconds the connection may stay down before the command fails; ``None``
            rides out any outage (a daemon).
        quiet: keep aio-pika's and aiormq's reports of reconnection attempts out of the
            logs the whole time, not only while connecting (a command that reports a lost
            broker itself).

    Raises:
        CliError: the broker cannot be reached, refused the login, or was lost.
    """
    transport = AmqpTransport(url, connection_name=name)
    try:
        with quiet_broker_clients():
            await transport.__aenter__()
    except TransportError as exc:
        raise broker_error(exc, url, setting, connected=False) from None
    quieted = quiet_broker_clients() if quiet else nullcontext()
    try:
        with quieted:
            async with anyio.create_task_group() as group:
                if patience is not None:
                    group.start_soon(_watch, transport, patience, url, setting)
                try:
                    yield transport
                finally:
                    group.cancel_scope.cancel()
    except BaseException as exc:
        error = first_error(exc)
        if isinstance(error, CliError):
            raise error from None
        if isinstance(error, TransportError | ConnectionError):
            raise broker_error(error, url, setting, connected=True) from None
        raise
    finally:
        with quiet_broker_clients():
            await transport.__aexit__(None, None, None)


async def _watch(transport: AmqpTransport, patience: float, url: str, setting: str) -> None:
    down_since: float | None = None
    while True:
        await anyio.sleep(WATCH_INTERVAL)
        if transport.connected:
            down_since = None
            continue
        now = time.monotonic()
        down_since = down_since or now
        if now - down_since >= patience:
            # Closed for good: no more reconnecting, and nothing waits for the broker to
            # close what was open on it.
            await transport.__aexit__(None, None, None)
            raise CliError(
                f"lost the broker at {redact(url)}: no connection for {patience:g} s; is "
                f"RabbitMQ running? check {setting}"
            )


def broker_error(exc: BaseException, url: str, setting: str, *, connected: bool) -> CliError:
    """The one line for a broker error: what happened, at which URL, what to check."""
    where = redact(url)
    text = str(exc)
    if isinstance(exc, BrokerAccessError):
        if not connected:
            return CliError(
                f"the broker at {where} refused the login ({text.split(' - ')[0]}); check the "
                f"user and password in {setting}"
            )
        return CliError(f"the broker at {where} refused: {text}; check the user's permissions")
    if "Connection.OpenOk" in text:  # the broker closed the connection as it was opened
        vhost = _vhost(url)
        return CliError(
            f"the broker at {where} closed the connection at login; does vhost {vhost!r} exist "
            f"and may the user use it? check {setting}"
        )
    lost = "lost" if connected else "cannot reach"
    return CliError(
        f"{lost} the broker at {where} ({connection_reason(exc)}); is RabbitMQ running? "
        f"check {setting}"
    )


def _vhost(url: str) -> str:
    path = urlparse(broker_urls(url)[0]).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def connection_reason(exc: BaseException) -> str:
    """Why a connection failed, in a few words: the OS's words when there are some."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and isinstance(seen.errno, int):
            if seen.errno > 0:
                return os.strerror(seen.errno).lower()
            if seen.strerror:
                return seen.strerror.lower()
        if isinstance(seen, TimeoutError | asyncio.TimeoutError):
            return "no answer in time"
        seen = seen.__cause__ or seen.__context__
    text = str(exc)
    if "within" in text:
        return "no answer in time"
    if "closed" in text.lower():
        return "the connection closed"
    return text or type(exc).__name__
