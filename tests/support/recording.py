"""A strategy wrapper for tests: it keeps what each round gave the strategy to aggregate."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from researcher.jobs.strategies import NodeUpdate


class RecordingStrategy:
    """Wraps a strategy and keeps the global parameters and updates of each round."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.seen: list[tuple[dict[str, np.ndarray], dict[str, NodeUpdate]]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def aggregate(
        self, round: int, params: Mapping[str, np.ndarray], updates: Mapping[str, NodeUpdate]
    ) -> dict[str, np.ndarray]:
        self.seen.append(({k: np.array(v) for k, v in params.items()}, dict(updates)))
        return self.inner.aggregate(round, params, updates)
