"""The node state store: entries, large arrays in files, persistence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from node_agent.state import INLINE_LIMIT, NodeStateStore, StateNotFoundError


def test_entries_round_trip_with_arrays(tmp_path: Path):
    with NodeStateStore(tmp_path) as store:
        state_id = store.new_state_id()
        small = np.arange(6, dtype=np.int16).reshape(2, 3)
        store.save(state_id, {"steps": [{"type": "impute", "x": 1.5}], "small": small})

        loaded = store.load(state_id)
        assert loaded["steps"] == [{"type": "impute", "x": 1.5}]
        np.testing.assert_array_equal(loaded["small"], small)
        assert loaded["small"].dtype == np.int16
        assert store.load_entry(state_id, "steps") == [{"type": "impute", "x": 1.5}]


def test_large_entries_go_to_files_and_survive_reopening(tmp_path: Path):
    big = np.random.default_rng(0).normal(size=(INLINE_LIMIT // 8 + 10,))
    with NodeStateStore(tmp_path) as store:
        state_id = store.new_state_id()
        store.save(state_id, {"table": big, "note": "x"})
    files = list((tmp_path / "state" / state_id).glob("*.mpk"))
    assert len(files) == 1

    with NodeStateStore(tmp_path) as reopened:
        assert reopened.exists(state_id)
        assert reopened.list() == [state_id]
        loaded = reopened.load(state_id)
        np.testing.assert_array_equal(loaded["table"], big)
        assert loaded["note"] == "x"

        reopened.save(state_id, {"table": big[:10]})
        assert list((tmp_path / "state" / state_id).glob("*.mpk")) == []
        np.testing.assert_array_equal(reopened.load_entry(state_id, "table"), big[:10])


def test_delete_removes_entries_and_files(tmp_path: Path):
    with NodeStateStore(tmp_path) as store:
        state_id = store.new_state_id()
        store.save(state_id, {"table": np.zeros(INLINE_LIMIT)})
        store.delete(state_id)

        assert not store.exists(state_id)
        assert not (tmp_path / "state" / state_id).exists()
        with pytest.raises(StateNotFoundError):
            store.load(state_id)
        with pytest.raises(StateNotFoundError):
            store.delete(state_id)


def test_unknown_states_and_entries_raise_key_errors(tmp_path: Path):
    with NodeStateStore(tmp_path) as store:
        state_id = store.new_state_id()
        with pytest.raises(StateNotFoundError, match="no entry 'missing'") as caught:
            store.load_entry(state_id, "missing")
        assert isinstance(caught.value, KeyError)
        with pytest.raises(StateNotFoundError, match="no node state"):
            store.load_entry("state_unknown", "x")
        with pytest.raises(StateNotFoundError):
            store.save("state_" + "0" * 32, {"a": 1})
        with pytest.raises(StateNotFoundError):
            store.save("../../escape", {"a": np.zeros(INLINE_LIMIT)})
    assert not (tmp_path.parent / "escape").exists()


def test_new_state_ids_are_unique(tmp_path: Path):
    with NodeStateStore(tmp_path) as store:
        ids = {store.new_state_id() for _ in range(20)}
    assert len(ids) == 20
    assert all(state_id.startswith("state_") for state_id in ids)
