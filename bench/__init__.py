"""Benchmarks of broker-net against a plain baseline, run with ``python -m bench.run``.

Each benchmark module exposes a ``run()`` returning :class:`Row` objects; :mod:`bench.run`
keeps the registry, prints the table and writes ``bench/results/latest.json``.
"""

from __future__ import annotations

from typing import TypedDict


class Row(TypedDict):
    """One measured figure: ours against the baseline, as a ratio to compare with a target."""

    name: str
    ours: float
    baseline: float
    ratio: float
    """``ours / baseline``: below 1 is faster than the baseline."""
    unit: str
    target: float | None
    """The highest acceptable ratio, or ``None`` for figures only reported."""


def row(
    name: str,
    ours: float,
    baseline: float,
    unit: str,
    target: float | None,
    ratio: float | None = None,
) -> Row:
    """Build a :class:`Row`; the ratio is ``ours / baseline`` unless given (e.g. the median
    of ratios measured turn by turn)."""
    return Row(
        name=name,
        ours=ours,
        baseline=baseline,
        ratio=ours / baseline if ratio is None else ratio,
        unit=unit,
        target=target,
    )
