"""``broker-net-demo setup-node``: a node's shard of the demo data, registered once."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from node_agent.datasets import DatasetRegistry
from researcher.orchestration.fedjob import FedJob
from simulation.cli import app
from simulation.demo_setup import DEMO_TAG


def test_setup_node_registers_the_shard_once(tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["setup-node", "--shard", "1", "--shards", "3", "--data-dir", str(tmp_path)]

    first = runner.invoke(app, args)
    again = runner.invoke(app, args)

    assert first.exit_code == 0, first.output
    assert "registered" in first.output and "already had" in again.output
    with DatasetRegistry(tmp_path) as registry:
        (entry,) = registry.list([DEMO_TAG])
    assert entry.name == "breast-cancer shard 2/3"


def test_setup_node_reads_the_node_data_folder_from_the_environment(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["setup-node", "--shard", "0"], env={"BROKER_NET_NODE_DATA_DIR": str(tmp_path)}
    )
    assert result.exit_code == 0, result.output
    with DatasetRegistry(tmp_path) as registry:
        assert len(registry.list([DEMO_TAG])) == 1


def test_jobs_find_the_demo_data_by_default() -> None:
    assert FedJob("job").datasets.tags == [DEMO_TAG]
