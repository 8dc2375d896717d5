"""The dataset registry: formats, tags, ids, persistence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from broker_net.messages import DatasetInfo
from node_agent.datasets import (
    DataLoadingError,
    DatasetNotFoundError,
    DatasetRegistry,
    Table,
)


@pytest.fixture
def registry(tmp_path: Path):
    with DatasetRegistry(tmp_path / "node") as registry:
        yield registry


def write_csv(path: Path) -> Path:
    path.write_text("age,weight,sex,label\n30,70.5,M,1\n,NA,F,0\n45,nan,F,1\n52,80,,N/A\n")
    return path


def test_csv_is_described_and_loaded_with_missing_values_as_nan(registry, tmp_path):
    entry = registry.add(write_csv(tmp_path / "patients.csv"), tags=["cohort"], target="label")

    assert entry.dataset_id.startswith("dataset_") and len(entry.dataset_id) == 8 + 32
    assert entry.path == (tmp_path / "patients.csv").resolve()
    assert entry.format == "csv"
    assert entry.name == "patients"
    assert entry.shape == [4, 4]
    assert entry.columns == ["age", "weight", "sex", "label"]
    assert entry.dtypes == {"age": "int64", "weight": "float64", "sex": "str", "label": "int64"}

    table = registry.load(entry.dataset_id)
    assert table.columns == ["age", "weight", "label"]
    assert table.values.dtype == np.float64
    expected = np.array(
        [[30, 70.5, 1], [np.nan, np.nan, 0], [45, np.nan, 1], [52, 80, np.nan]], dtype=np.float64
    )
    np.testing.assert_array_equal(table.values, expected)
    np.testing.assert_array_equal(table.column("age"), expected[:, 0])


def test_npy_columns_are_named_by_position(registry, tmp_path):
    array = np.arange(12, dtype=np.int32).reshape(4, 3)
    np.save(tmp_path / "x.npy", array)

    entry = registry.add(tmp_path / "x.npy")

    assert entry.columns == ["c0", "c1", "c2"]
    assert entry.dtypes == {"c0": "int32", "c1": "int32", "c2": "int32"}
    assert entry.target is None
    np.testing.assert_array_equal(registry.load(entry.dataset_id).values, array)


def test_npz_with_named_columns_and_y_makes_y_the_default_target(registry, tmp_path):
    x = np.array([[1.0, 2.0], [3.0, np.nan]])
    y = np.array([0, 1])
    np.savez(tmp_path / "d.npz", X=x, y=y, columns=np.array(["height", "dose"]))

    entry = registry.add(tmp_path / "d.npz", name="trial")

    assert entry.columns == ["height", "dose", "y"]
    assert entry.target == "y"
    assert entry.shape == [2, 3]
    table = registry.load(entry.dataset_id)
    np.testing.assert_array_equal(table.values, np.column_stack([x, y]))


@pytest.mark.parametrize(
    ("filename", "content"),
    [
        ("notes.txt", b"hello"),
        ("empty.csv", b""),
        ("ragged.csv", b"a,b\n1,2\n3\n"),
        ("dupes.csv", b"a,a\n1,2\n"),
    ],
)
def test_unreadable_files_are_refused(registry, tmp_path, filename, content):
    path = tmp_path / filename
    path.write_bytes(content)

    with pytest.raises(DataLoadingError):
        registry.add(path)
    assert registry.list() == []


def test_npz_without_x_and_unknown_target_are_refused(registry, tmp_path):
    np.savez(tmp_path / "bad.npz", data=np.zeros((2, 2)))
    with pytest.raises(DataLoadingError, match="'X'"):
        registry.add(tmp_path / "bad.npz")
    with pytest.raises(DataLoadingError, match="target"):
        registry.add(write_csv(tmp_path / "p.csv"), target="outcome")


def test_list_filters_on_all_tags(registry, tmp_path):
    path = write_csv(tmp_path / "p.csv")
    a = registry.add(path, tags=["heart", "2024"])
    b = registry.add(path, tags=["heart"])
    registry.add(path, tags=["lung"])

    assert [e.dataset_id for e in registry.list(["heart"])] == [a.dataset_id, b.dataset_id]
    assert [e.dataset_id for e in registry.list(["heart", "2024"])] == [a.dataset_id]
    assert len(registry.list()) == 3
    assert registry.list(["brain"]) == []


def test_get_info_remove_and_unknown_ids(registry, tmp_path):
    entry = registry.add(write_csv(tmp_path / "p.csv"), description="four patients")

    info = registry.info(entry.dataset_id)
    assert isinstance(info, DatasetInfo)
    assert info.description == "four patients"
    assert info.columns == entry.columns

    registry.remove(entry.dataset_id)
    with pytest.raises(DatasetNotFoundError, match=entry.dataset_id) as caught:
        registry.get(entry.dataset_id)
    assert isinstance(caught.value, KeyError)
    with pytest.raises(DatasetNotFoundError):
        registry.remove(entry.dataset_id)
    with pytest.raises(DatasetNotFoundError):
        registry.load("dataset_nope")


def test_registry_survives_reopening(tmp_path):
    data_dir = tmp_path / "node"
    with DatasetRegistry(data_dir) as registry:
        entry = registry.add(write_csv(tmp_path / "p.csv"), tags=["t"], target="age")
    with DatasetRegistry(data_dir) as reopened:
        assert reopened.get(entry.dataset_id) == entry
    assert (data_dir / "datasets.sqlite").is_file()


def test_load_fails_cleanly_when_the_file_is_gone(registry, tmp_path):
    entry = registry.add(write_csv(tmp_path / "p.csv"))
    (tmp_path / "p.csv").unlink()

    with pytest.raises(DataLoadingError):
        registry.load(entry.dataset_id)


def test_table_checks_its_shape():
    with pytest.raises(ValueError, match="columns"):
        Table(["a", "b"], np.zeros((3, 3)))
    with pytest.raises(KeyError):
        Table(["a"], np.zeros((3, 1))).column("b")
