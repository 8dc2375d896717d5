"""Shuffled mini-batches, the loop every ready plan's ``train`` runs."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt


def shuffled_batches(
    n_rows: int, training_args: Mapping[str, Any]
) -> Iterator[tuple[int, npt.NDArray[np.int64]]]:
    """``(step, rows)`` for ``epochs`` passes over ``n_rows`` rows, each pass in a new order
    drawn from ``seed``, in batches of ``batch_size``; ``step`` counts from 1.

    Every ``training_args`` value is optional: ``epochs`` 1, ``batch_size`` 32, ``seed`` 0.
    """
    epochs = int(training_args.get("epochs", 1))
    batch_size = max(1, int(training_args.get("batch_size", 32)))
    rng = np.random.default_rng(int(training_args.get("seed", 0)))
    step = 0
    for _ in range(epochs):
        order = rng.permutation(n_rows)
        for start in range(0, n_rows, batch_size):
            step += 1
            yield step, order[start : start + batch_size]
