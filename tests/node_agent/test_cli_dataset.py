"""``node-agent dataset add|list|remove``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from node_agent.cli_dataset import dataset_app
from node_agent.datasets import DatasetRegistry


@pytest.fixture
def csv_file(tmp_path: Path) -> Path:
    path = tmp_path / "patients.csv"
    path.write_text("age,label\n30,1\n,0\n")
    return path


def invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(dataset_app, list(args), env=env)


def test_add_list_remove(tmp_path, csv_file):
    data_dir = str(tmp_path / "node")
    added = invoke("add", str(csv_file), "--tag", "heart", "-t", "2024", "--target", "label",
                   "--description", "two patients", "--data-dir", data_dir)  # fmt: skip
    assert added.exit_code == 0, added.output
    with DatasetRegistry(Path(data_dir)) as registry:
        (entry,) = registry.list()
    assert entry.dataset_id in added.output
    assert entry.tags == ["2024", "heart"] and entry.target == "label"

    listed = invoke("list", "--json", "--tag", "heart", "--data-dir", data_dir)
    assert listed.exit_code == 0, listed.output
    (row,) = json.loads(listed.output)
    assert row["dataset_id"] == entry.dataset_id
    assert row["columns"] == ["age", "label"]
    assert row["description"] == "two patients"
    assert json.loads(invoke("list", "--json", "-t", "lung", "--data-dir", data_dir).output) == []

    table = invoke("list", "--data-dir", data_dir, env={"COLUMNS": "160"})
    assert entry.dataset_id in table.output and "patients" in table.output

    removed = invoke("remove", entry.dataset_id, "--data-dir", data_dir)
    assert removed.exit_code == 0
    assert "No datasets" in invoke("list", "--data-dir", data_dir).output


def test_data_dir_comes_from_the_node_environment(tmp_path, csv_file):
    env = {"BROKER_NET_NODE_DATA_DIR": str(tmp_path / "from-env")}
    assert invoke("add", str(csv_file), env=env).exit_code == 0
    with DatasetRegistry(tmp_path / "from-env") as registry:
        assert len(registry.list()) == 1


def test_errors_exit_2_with_one_line(tmp_path, csv_file):
    data_dir = str(tmp_path / "node")
    bad_target = invoke("add", str(csv_file), "--target", "nope", "--data-dir", data_dir)
    assert bad_target.exit_code == 2
    assert bad_target.stderr.startswith("error: target column 'nope'")
    unknown = invoke("remove", "dataset_nope", "--data-dir", data_dir)
    assert unknown.exit_code == 2
    assert unknown.stderr == "error: no dataset with id 'dataset_nope'\n"
    assert invoke("add", str(tmp_path / "missing.csv"), "--data-dir", data_dir).exit_code == 2


def test_every_command_has_help():
    for command in ("add", "list", "remove"):
        result = invoke(command, "--help")
        assert result.exit_code == 0
        assert "--data-dir" in result.output
