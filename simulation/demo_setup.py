"""Give a node its shard of the demo data, as an operator would register a dataset."""

from __future__ import annotations

from pathlib import Path

from node_agent.datasets import DatasetEntry, DatasetRegistry
from simulation.sample_data import TARGET, write_shard_csv

DEMO_TAG = "breast-cancer"


def register_demo_shard(
    data_dir: Path, shard: int, shards: int, *, non_iid: bool = False
) -> tuple[DatasetEntry, bool]:
    """Write shard ``shard`` of ``shards`` into ``data_dir`` and register it.

    Returns:
        The dataset entry, and whether it was created now (False when it already existed).
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    with DatasetRegistry(data_dir) as registry:
        existing = registry.list([DEMO_TAG])
        if existing:
            return existing[0], False
        path = data_dir / "datasets" / f"breast-cancer-{shard}-of-{shards}.csv"
        write_shard_csv(path, shard, shards, non_iid=non_iid)
        entry = registry.add(
            path,
            name=f"breast-cancer shard {shard + 1}/{shards}",
            tags=[DEMO_TAG, "demo"],
            target=TARGET,
            description="scikit-learn's breast-cancer data, one node's shard",
        )
        return entry, True
