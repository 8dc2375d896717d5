"""Monitors: sync or async, in a task of their own, their failures logged, never holding up a
round, dropping what they cannot keep up with."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import anyio
import anyio.lowlevel
import pytest

from researcher.jobs.monitor import ProgressMonitor, monitored
from researcher.requests.hooks import RequestHooks
from researcher.requests.progress import ProgressEvent

pytestmark = pytest.mark.anyio


def _event(sequence: int) -> ProgressEvent:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    return ProgressEvent(
        node_id="n1", node_name="", request_id="request_1", experiment_id="exp", round=1,
        sequence=sequence, sent_at=at, received_at=at, values={"iteration": float(sequence)},
    )  # fmt: skip


async def test_a_sync_monitor_gets_every_event_in_order_and_its_failures_are_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[int] = []

    def monitor(event: ProgressEvent) -> None:
        seen.append(event.sequence)
        if event.sequence == 1:
            raise ValueError("a bug in the monitor")

    watcher = ProgressMonitor(monitor)
    with caplog.at_level(logging.ERROR, logger="researcher.jobs.monitor"):
        async with watcher.running():
            for sequence in range(4):
                watcher.offer(_event(sequence))
    assert seen == [0, 1, 2, 3]
    assert "a bug in the monitor" in caplog.text


async def test_an_async_monitor_is_awaited() -> None:
    seen: list[int] = []

    async def monitor(event: ProgressEvent) -> None:
        await anyio.lowlevel.checkpoint()
        seen.append(event.sequence)

    watcher = ProgressMonitor(monitor)
    async with watcher.running():
        watcher.offer(_event(0))
        watcher.offer(_event(1))
    assert seen == [0, 1]


async def test_a_stuck_monitor_never_holds_up_the_round_and_drops_what_it_cannot_keep(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import researcher.jobs.monitor as monitor_module

    monkeypatch.setattr(monitor_module, "DRAIN_TIMEOUT", 0.05)
    release = anyio.Event()
    seen: list[int] = []

    async def monitor(event: ProgressEvent) -> None:
        seen.append(event.sequence)
        await release.wait()

    watcher = ProgressMonitor(monitor, buffer=3)
    async with watcher.running():
        for sequence in range(100):
            watcher.offer(_event(sequence))  # returns at once, whatever the monitor does
        await anyio.sleep(0.01)
    # Three events queued, the rest dropped; the monitor stuck on the first of them, and the
    # block ended all the same.
    assert seen == [0]
    assert watcher.dropped == 97
    watcher.offer(_event(100))  # not running: dropped
    assert watcher.dropped == 98


def test_monitored_hooks_keep_what_they_had() -> None:
    watcher = ProgressMonitor(lambda event: None)
    hooks = RequestHooks(request_id="request_1")
    merged = monitored(hooks, watcher)
    assert merged is not None
    assert (merged.request_id, merged.on_progress) == ("request_1", watcher.offer)
    assert monitored(hooks, None) is hooks
    assert monitored(None, watcher) == RequestHooks(on_progress=watcher.offer)


async def test_an_error_of_the_round_comes_out_as_it_is() -> None:
    watcher = ProgressMonitor(lambda event: None)
    with pytest.raises(KeyError):
        async with watcher.running():
            watcher.offer(_event(0))
            raise KeyError("the round failed")
