"""Inbox: the unbounded queue between a broker's delivery callback and the task consuming it.

A consumer's deliveries arrive through a callback (aio-pika's, or the in-memory broker's) and
are read by one task with ``async for``; the node agent hands them on to its workers through a
second inbox. An anyio memory stream does this too, but costs an event object, a checkpoint and
a generic-alias call on every receive; on the path every message takes, that was a tenth of the
node's own work per ping. The inbox keeps a deque and, only while a reader waits, a future per
waiting reader. It runs on asyncio, as both transports do.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

import anyio

T = TypeVar("T")


class Inbox(Generic[T]):
    """Items put by callbacks, received in order by one task or several.

    ``put_nowait`` never blocks (the consumer's prefetch bounds how much can be waiting);
    after :meth:`close` it refuses new items and the readers get what is left, then
    ``anyio.EndOfStream``. A cancelled :meth:`receive` loses nothing: an item it was woken
    for goes to the next reader.
    """

    __slots__ = ("_closed", "_items", "_waiters")

    def __init__(self) -> None:
        self._items: deque[T] = deque()
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def put_nowait(self, item: T) -> None:
        """Add ``item`` and wake a reader.

        Raises:
            anyio.ClosedResourceError: the inbox is closed.
        """
        if self._closed:
            raise anyio.ClosedResourceError
        self._items.append(item)
        if self._waiters:
            self._wake()

    def close(self) -> None:
        """Refuse further items; the readers drain what is left, then see the end."""
        self._closed = True
        waiters, self._waiters = self._waiters, deque()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def receive_nowait(self) -> T:
        """The oldest item.

        Raises:
            anyio.WouldBlock: nothing is waiting (and the inbox is open).
            anyio.EndOfStream: the inbox is closed and empty.
        """
        if self._items:
            return self._items.popleft()
        if self._closed:
            raise anyio.EndOfStream
        raise anyio.WouldBlock

    async def receive(self) -> T:
        """The oldest item, waiting for one if needed.

        Raises:
            anyio.EndOfStream: the inbox is closed and empty.
        """
        while not self._items:
            if self._closed:
                raise anyio.EndOfStream
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    # Woken, then cancelled before taking the item: pass it on.
                    if self._items:
                        self._wake()
                elif waiter in self._waiters:
                    self._waiters.remove(waiter)
                raise
        return self._items.popleft()

    def _wake(self) -> None:
        """Wake the longest-waiting reader still waiting."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
