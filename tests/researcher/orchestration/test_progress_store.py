"""The job store keeps the progress nodes reported, and reads it back by id."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from researcher.orchestration.store.job_store import JobStore
from researcher.orchestration.store.records import ProgressRecord


def _record(node: str, iteration: int, loss: float) -> ProgressRecord:
    return ProgressRecord(
        id=0, job_id="", task="", round=1, node_id=node, request_id="request_1",
        at=datetime(2026, 1, 1, 12, 0, iteration, tzinfo=UTC),
        values={"iteration": float(iteration), "loss": loss},
    )  # fmt: skip


def test_progress_is_stored_and_read_back_in_order_after_the_last_id_seen(tmp_path: Path) -> None:
    with JobStore(tmp_path) as store:
        for i in range(5):
            store.add_progress("job_a", "train", _record("n1", i, 1.0 / (i + 1)))
        store.add_progress("job_b", "train", _record("n2", 9, 0.5))

        first = store.progress("job_a", limit=3)
        assert [r.values["iteration"] for r in first] == [0.0, 1.0, 2.0]
        assert all(r.job_id == "job_a" and r.task == "train" for r in first)
        assert first[0].at == datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
        assert first[0].id > 0 and [r.id for r in first] == sorted(r.id for r in first)

        rest = store.progress("job_a", after=first[-1].id)
        assert [r.values for r in rest] == [
            {"iteration": 3.0, "loss": 0.25}, {"iteration": 4.0, "loss": 0.2},
        ]  # fmt: skip
        assert store.progress("job_a", after=rest[-1].id) == []
        (other,) = store.progress("job_b")
        assert (other.node_id, other.round, other.request_id) == ("n2", 1, "request_1")


def test_progress_survives_reopening_the_store(tmp_path: Path) -> None:
    with JobStore(tmp_path) as store:
        store.add_progress("job_a", "train", _record("n1", 1, 0.9))
    with JobStore(tmp_path) as store:
        (kept,) = store.progress("job_a")
    assert kept.values == {"iteration": 1.0, "loss": 0.9}
