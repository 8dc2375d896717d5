"""Broker failover: a list of RabbitMQ URLs, and a robust connection that moves along it.

aio-pika's robust connection reconnects to the one URL it was given, so when that broker node
dies it keeps knocking on a dead door. :class:`FailoverConnection` is a robust connection that
moves on to the next URL of its list every time its connection closes or an attempt to connect
fails, going round; everything aio-pika restores on reconnect (channels, exchanges, queues,
bindings, consumers) is restored on whichever node answers. :func:`connect_failover` opens
one, trying each URL in turn.

A list is written as one string, the URLs separated by commas. After the first, an entry may
be just ``host:port``: it takes the scheme, credentials, vhost and options of the first URL::

    amqp://node-a:secret@rmq1:5672/broker-net,rmq2:5672,rmq3:5672

A comma inside a URL (in a password, say) must be percent-encoded as ``%2C``.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aio_pika
from yarl import URL

logger = logging.getLogger(__name__)

RECONNECT_INTERVAL = 1.0
"""Seconds between attempts to reconnect, unless a URL sets ``reconnect_interval``."""

_HOST_PORT = re.compile(r"[A-Za-z0-9._-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


def broker_urls(value: str) -> list[str]:
    """Split a comma-separated list of broker URLs into full URLs.

    Raises:
        ValueError: the list is empty, has an empty entry, starts with a bare ``host:port``,
            or has an entry that is neither a URL nor ``host[:port]``.
    """
    entries = [entry.strip() for entry in value.split(",")]
    if any(not entry for entry in entries):
        raise ValueError(f"empty entry in the broker URL list {redact(value)!r}")
    first = entries[0]
    if "://" not in first:
        raise ValueError(f"the first broker URL must be a full URL, not {first!r}")
    base = urlsplit(first)
    userinfo = base.netloc.rpartition("@")[0]
    urls = [first]
    for entry in entries[1:]:
        if "://" in entry:
            urls.append(entry)
            continue
        if not _HOST_PORT.fullmatch(entry):
            raise ValueError(f"bad broker address {entry!r}: expected host or host:port")
        # Built from the first URL's text, so its escapes (%2C, %40...) stay as written.
        netloc = f"{userinfo}@{entry}" if userinfo else entry
        urls.append(urlunsplit(base._replace(netloc=netloc)))
    return urls


def redact(url: str) -> str:
    """``url`` (or a list of them) with the credentials masked, for logs and errors."""
    return ",".join(_redact_one(part) for part in url.split(","))


def _redact_one(url: str) -> str:
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1) if "://" in url else ("", url)
    return f"{scheme}://***@{rest.split('@', 1)[1]}"


class FailoverConnection(aio_pika.RobustConnection):
    """A robust connection over several broker nodes.

    Each time the connection closes, or an attempt to open it fails, the next URL becomes the
    current one; the robust connection's own retry loop then connects to it and restores
    every channel, declaration and consumer there.

    Args:
        urls: the brokers, tried in this order and then round again.
        kwargs: as for :class:`aio_pika.RobustConnection` (``client_properties``...).
    """

    def __init__(self, urls: Sequence[str], **kwargs: Any) -> None:
        if not urls:
            raise ValueError("a failover connection needs at least one URL")
        self.urls = [URL(url) for url in urls]
        self.current = 0
        if "reconnect_interval" not in self.urls[0].query:
            kwargs.setdefault("reconnect_interval", RECONNECT_INTERVAL)
        super().__init__(self.urls[0], **kwargs)

    def rotate(self) -> None:
        """Make the next URL the one the connection uses from its next attempt on."""
        if len(self.urls) > 1:
            self.current = (self.current + 1) % len(self.urls)
            self.url = self.urls[self.current]
            logger.info("next broker: %s", redact(str(self.url)))

    async def _on_connection_close(self, closing: asyncio.Future[Any]) -> None:
        # aio-pika calls this when an open connection closes and when an attempt fails.
        if not self.is_closed and not self._close_called:
            self.rotate()
        await super()._on_connection_close(closing)


async def connect_failover(
    urls: Sequence[str], *, timeout: float, **kwargs: Any
) -> FailoverConnection:
    """Open a :class:`FailoverConnection` to the first of ``urls`` that answers.

    Each URL gets one attempt of at most ``timeout`` seconds; the caller bounds the whole.

    Raises:
        Exception: the error of the last URL tried (aio-pika's or the socket's), or of the
            first one refusing the credentials, which no other node would accept either.
    """
    last: Exception | None = None
    for start in range(len(urls)):
        ordered = [*urls[start:], *urls[:start]]
        connection = FailoverConnection(ordered, **kwargs)
        try:
            await connection.connect(timeout=timeout)
        except aio_pika.exceptions.ProbableAuthenticationError:
            await connection.close()
            raise
        except Exception as exc:  # an unreachable node: try the next
            await connection.close()
            logger.info("broker %s unreachable: %s", redact(urls[start]), exc)
            last = exc
            continue
        if start:
            logger.warning("connected to %s; the brokers before it are unreachable",
                           redact(urls[start]))  # fmt: skip
        return connection
    assert last is not None
    raise last
