"""The node's stored replies: small ones in SQLite, large ones in files of their own."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import numpy as np

from node_agent.replies import FILE_BODY_SIZE, ReplyStore, StoredReply


def _large_parts() -> tuple[bytes, memoryview]:
    array = np.arange(FILE_BODY_SIZE // 4 + 10, dtype=np.float32)
    return (b"header-bytes", memoryview(array).cast("B"))


def _reply(body) -> StoredReply:  # type: ignore[no-untyped-def]
    return StoredReply(body, "researcher.alice", "train_reply", "m-1")


def test_a_large_reply_is_written_to_a_file_from_its_parts_and_read_back_whole(tmp_path: Path):
    parts = _large_parts()
    with ReplyStore(tmp_path / "replies.sqlite") as store:
        store.persist("r-1", _reply(parts))
    files = list((tmp_path / "replies-bodies").iterdir())
    assert [f.suffix for f in files] == [".reply"]  # no partial file left behind
    with sqlite3.connect(tmp_path / "replies.sqlite") as db:
        (blob,) = db.execute("SELECT body FROM replies WHERE request_id = 'r-1'").fetchone()
    assert blob is None
    with ReplyStore(tmp_path / "replies.sqlite") as reopened:  # as after a restart
        found = reopened.get("r-1")
    assert found is not None
    assert found.body == b"".join(parts)
    assert (found.reply_to, found.message_type, found.message_id) == (
        "researcher.alice", "train_reply", "m-1"
    )  # fmt: skip


def test_a_small_reply_stays_in_the_database(tmp_path: Path):
    with ReplyStore(tmp_path / "replies.sqlite") as store:
        store.persist("r-1", _reply((b"abc", memoryview(b"def"))))
        found = store.get("r-1")
    assert found is not None and found.body == b"abcdef"
    assert not (tmp_path / "replies-bodies").exists()


def test_replacing_a_large_reply_with_a_small_one_removes_its_file(tmp_path: Path):
    with ReplyStore(tmp_path / "replies.sqlite") as store:
        store.persist("r-1", _reply(_large_parts()))
        store.persist("r-1", _reply(b"small"))
        found = store.get("r-1")
    assert found is not None and found.body == b"small"
    assert list((tmp_path / "replies-bodies").iterdir()) == []


def test_a_body_file_removed_by_hand_means_no_stored_reply(tmp_path: Path):
    with ReplyStore(tmp_path / "replies.sqlite") as store:
        store.persist("r-1", _reply(_large_parts()))
        for file in (tmp_path / "replies-bodies").iterdir():
            file.unlink()
        assert store.get("r-1") is None


def test_expired_replies_and_their_files_go_when_the_store_is_opened(tmp_path: Path):
    with ReplyStore(tmp_path / "replies.sqlite") as store:
        store.persist("old", _reply(_large_parts()))
        store.persist("new", _reply(_large_parts()))
        store.persist("small", _reply(b"x"))
    with sqlite3.connect(tmp_path / "replies.sqlite") as db:
        db.execute("UPDATE replies SET stored_at = ? WHERE request_id IN ('old', 'small')",
                   (time.time() - 8 * 86400,))  # fmt: skip
    with ReplyStore(tmp_path / "replies.sqlite") as store:
        assert store.get("old") is None and store.get("small") is None
        assert store.get("new") is not None
    assert len(list((tmp_path / "replies-bodies").iterdir())) == 1


def test_a_database_written_before_body_files_is_read_and_extended(tmp_path: Path):
    with sqlite3.connect(tmp_path / "replies.sqlite") as db:
        db.execute(
            "CREATE TABLE replies (request_id TEXT PRIMARY KEY, reply_to TEXT, "
            "message_type TEXT, message_id TEXT, body BLOB, stored_at REAL)"
        )
        db.execute("INSERT INTO replies VALUES ('r-0', 'q', 'fa_reply', 'm-0', x'0102', ?)",
                   (time.time(),))  # fmt: skip
    with ReplyStore(tmp_path / "replies.sqlite") as store:
        old = store.get("r-0")
        store.persist("r-1", _reply(_large_parts()))
        new = store.get("r-1")
    assert old is not None and old.body == b"\x01\x02"
    assert new is not None and len(new.body) == len(b"".join(_large_parts()))


def test_request_ids_never_name_paths(tmp_path: Path):
    with ReplyStore(tmp_path / "data" / "replies.sqlite") as store:
        store.persist("../../escape", _reply(_large_parts()))
        assert store.get("../../escape") is not None
    assert [p.parent for p in tmp_path.rglob("*.reply")] == [tmp_path / "data" / "replies-bodies"]


def test_body_files_no_row_names_are_removed_once_old(tmp_path: Path):
    with ReplyStore(tmp_path / "replies.sqlite") as store:
        store.persist("kept", _reply(_large_parts()))
    bodies = tmp_path / "replies-bodies"
    (kept,) = bodies.iterdir()
    old_orphan, new_orphan = bodies / "crash.reply.partial", bodies / "writing.reply.partial"
    for file in (old_orphan, new_orphan):
        file.write_bytes(b"x")
    hour_ago = time.time() - 2 * 3600
    os.utime(old_orphan, (hour_ago, hour_ago))
    os.utime(kept, (hour_ago, hour_ago))
    with ReplyStore(tmp_path / "replies.sqlite") as store:
        assert store.get("kept") is not None
    assert sorted(p.name for p in bodies.iterdir()) == sorted([kept.name, new_orphan.name])
