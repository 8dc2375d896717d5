"""scikit-learn's bundled breast-cancer data, split into node shards and a test set.

The demo and the tests use it: each node holds one shard as a CSV file (features plus a
``target`` column); the researcher keeps the held-out test set to score the federated model
against one trained centrally on the pooled shards.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
TARGET = "target"
_SPLIT_SEED = 42


@dataclass(frozen=True)
class SampleData:
    """Pooled training rows, the held-out test rows and the feature names."""

    x_train: FloatArray
    y_train: FloatArray
    x_test: FloatArray
    y_test: FloatArray
    columns: list[str]


def breast_cancer(test_fraction: float = 0.2) -> SampleData:
    """Load the data set and hold out a stratified, seeded test set."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    bunch = load_breast_cancer()
    columns = [name.replace(" ", "_") for name in bunch.feature_names]
    x_train, x_test, y_train, y_test = train_test_split(
        bunch.data.astype(np.float64), bunch.target.astype(np.float64),
        test_size=test_fraction, random_state=_SPLIT_SEED, stratify=bunch.target,
    )  # fmt: skip
    return SampleData(x_train, y_train, x_test, y_test, columns)


def shard(
    data: SampleData, index: int, count: int, *, non_iid: bool = False
) -> tuple[FloatArray, FloatArray]:
    """Rows of node ``index`` out of ``count``.

    IID shards are a seeded random partition. Non-IID shards skew the label mix: rows are
    ordered by label with a little noise, so each node sees mostly one class.
    """
    if not 0 <= index < count:
        raise ValueError(f"shard {index} does not exist among {count}")
    rng = np.random.default_rng(_SPLIT_SEED)
    if non_iid:
        order = np.argsort(data.y_train + rng.uniform(0, 1.2, len(data.y_train)), kind="stable")
    else:
        order = rng.permutation(len(data.y_train))
    rows = np.array_split(order, count)[index]
    return data.x_train[rows], data.y_train[rows]


def write_shard_csv(path: Path, index: int, count: int, *, non_iid: bool = False) -> int:
    """Write node ``index``'s shard as CSV with a header row; return the row count."""
    data = breast_cancer()
    x, y = shard(data, index, count, non_iid=non_iid)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = np.column_stack([x, y])
    header = ",".join([*data.columns, TARGET])
    np.savetxt(path, table, delimiter=",", header=header, comments="", fmt="%.10g")
    return len(y)
