"""Inbox: the queue between a consumer's delivery callback and its readers."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from broker_net.inbox import Inbox

pytestmark = pytest.mark.anyio


async def test_items_come_out_in_order_and_nothing_is_lost_after_close() -> None:
    inbox = Inbox[int]()
    for item in range(3):
        inbox.put_nowait(item)
    assert len(inbox) == 3
    assert await inbox.receive() == 0
    inbox.close()
    assert inbox.closed
    with pytest.raises(anyio.ClosedResourceError):
        inbox.put_nowait(9)
    assert inbox.receive_nowait() == 1
    assert await inbox.receive() == 2
    with pytest.raises(anyio.EndOfStream):
        await inbox.receive()
    with pytest.raises(anyio.EndOfStream):
        inbox.receive_nowait()


async def test_an_open_empty_inbox_would_block() -> None:
    with pytest.raises(anyio.WouldBlock):
        Inbox[int]().receive_nowait()


async def test_a_waiting_reader_is_woken_by_a_put_and_by_close() -> None:
    inbox = Inbox[str]()
    got: list[str] = []

    async def read() -> None:
        try:
            while True:
                got.append(await inbox.receive())
        except anyio.EndOfStream:
            got.append("end")

    with anyio.fail_after(2):
        async with anyio.create_task_group() as group:
            group.start_soon(read)
            await anyio.sleep(0.01)
            inbox.put_nowait("a")
            await anyio.sleep(0.01)
            inbox.put_nowait("b")
            inbox.close()
    assert got == ["a", "b", "end"]


async def test_several_readers_share_the_items_each_once() -> None:
    inbox = Inbox[int]()
    got: list[tuple[int, int]] = []

    async def read(reader: int) -> None:
        try:
            while True:
                item = await inbox.receive()
                got.append((reader, item))
                await anyio.sleep(0.01)  # busy for a while: the others take the next ones
        except anyio.EndOfStream:
            pass

    with anyio.fail_after(2):
        async with anyio.create_task_group() as group:
            for reader in range(3):
                group.start_soon(read, reader)
            await anyio.sleep(0.01)
            for item in range(30):
                inbox.put_nowait(item)
                await anyio.lowlevel.checkpoint()
            await anyio.sleep(0.05)
            inbox.close()
    assert sorted(item for _, item in got) == list(range(30))
    assert {reader for reader, _ in got} == {0, 1, 2}


async def test_a_reader_cancelled_after_being_woken_passes_the_item_on() -> None:
    inbox = Inbox[str]()
    got: list[str] = []

    async def read(name: str) -> None:
        got.append(f"{name}:{await inbox.receive()}")

    # asyncio itself: anyio defers a cancellation until the task waits again, so only a raw
    # task.cancel() lands between the wake-up and the moment the reader takes its item.
    loop = asyncio.get_running_loop()
    first = loop.create_task(read("first"))
    await asyncio.sleep(0.01)
    second = loop.create_task(read("second"))
    await asyncio.sleep(0.01)
    inbox.put_nowait("item")  # wakes the first reader, which waited longest
    first.cancel()  # before it gets to run
    with anyio.fail_after(2):
        await second
    assert first.cancelled()
    assert got == ["second:item"]
