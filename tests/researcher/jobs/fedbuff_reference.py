"""A plain numpy FedBuff (Nguyen et al. 2022, Algorithm 1 with sample-size weighting), written
apart from researcher.jobs.fedbuff, to check the network's versions against.

Every node trains on the version it was last given; ``arrivals`` is the order in which the
nodes' updates come back. A node whose update arrived is given the newest version at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Train = Callable[[str, dict[str, np.ndarray], int], tuple[dict[str, np.ndarray], int]]
"""(node, parameters, version) -> (trained parameters, sample size)."""


def fedbuff_reference(
    initial: dict[str, np.ndarray],
    nodes: Sequence[str],
    arrivals: Sequence[str],
    train: Train,
    *,
    buffer_size: int,
    server_learning_rate: float,
    max_staleness: int,
    exponent: float | None,
    weight_by_sample_size: bool,
) -> tuple[list[dict[str, np.ndarray]], list[tuple[str, int, bool]]]:
    """Every version's parameters (version 0 first) and each arrival's (node, staleness,
    dropped). ``exponent`` None weighs every update 1, else ``(1 + s) ** -exponent``."""
    versions = [{k: np.array(v, dtype=np.float64) for k, v in initial.items()}]
    given = dict.fromkeys(nodes, 0)
    buffer: list[tuple[float, int, dict[str, np.ndarray]]] = []
    log = []
    for node in arrivals:
        base = given[node]
        trained, samples = train(node, versions[base], base)
        staleness = len(versions) - 1 - base
        dropped = staleness > max_staleness
        log.append((node, staleness, dropped))
        if not dropped:
            weight = 1.0 if exponent is None else (1.0 + staleness) ** -exponent
            delta = {k: trained[k] - versions[base][k] for k in versions[base]}
            buffer.append((weight, samples, delta))
        if len(buffer) == buffer_size:
            if weight_by_sample_size:
                total = sum(s for _, s, _ in buffer)
                factors = [w * s / total for w, s, _ in buffer]
            else:
                factors = [w / len(buffer) for w, _, _ in buffer]
            current = versions[-1]
            new = {}
            for name in current:
                step = np.zeros_like(current[name])
                for (_, _, delta), factor in zip(buffer, factors, strict=True):
                    step += factor * delta[name]
                new[name] = current[name] + server_learning_rate * step
            versions.append(new)
            buffer = []
        given[node] = len(versions) - 1
    return versions, log
