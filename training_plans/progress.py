"""Progress a plan reports while it trains: where :meth:`TrainingPlan.report_progress
<training_plans.plan.TrainingPlan.report_progress>` sends it.

Outside a node nothing receives it and reporting does nothing. In a node's plan process the
worker installs a sink (:func:`set_progress_sink`) that hands the values to the node, which
forwards the latest of them to the researcher now and then. Reporting never raises and never
waits for the researcher: a plan may report every iteration.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol


class ProgressSink(Protocol):
    """What receives a plan's reports (in a node's plan process, the worker)."""

    def due(self) -> bool:
        """Whether a report now would be sent on (not replaced by a later one)."""
        ...

    def report(self, values: dict[str, float]) -> None:
        """Take one report's values; returns at once."""
        ...


MAX_VALUES = 32
"""Values one report keeps (the first ones); the wire carries no more."""
MAX_NAME = 64
"""Characters of a value's name; longer names are left out."""

_sink: ProgressSink | None = None
_logger = logging.getLogger(__name__)


def set_progress_sink(sink: ProgressSink | None) -> ProgressSink | None:
    """Install ``sink`` (``None`` removes it); return the one it replaces."""
    global _sink
    previous, _sink = _sink, sink
    return previous


def progress_values(values: Mapping[str, Any]) -> dict[str, float]:
    """The reportable part of ``values``: names of at most :data:`MAX_NAME` characters
    mapped to real numbers (numpy scalars and 0-d arrays too), at most :data:`MAX_VALUES`.
    ``None`` and anything that is not a number are left out, never raised on."""
    kept: dict[str, float] = {}
    for name, value in values.items():
        if len(kept) >= MAX_VALUES:
            break
        if not isinstance(name, str) or len(name) > MAX_NAME or value is None:
            continue
        if isinstance(value, bool | str | bytes):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            continue
        kept[name] = number
    return kept


def progress_due() -> bool:
    """Whether a report now would be sent on: a sink is installed and wants one. Never
    raises. A plan may compute costly values (a loss over a batch) only then."""
    sink = _sink
    if sink is None:
        return False
    try:
        return bool(sink.due())
    except Exception:
        return False


def report_progress(values: Mapping[str, Any]) -> None:
    """Hand ``values`` to the installed sink, if any; never raises."""
    sink = _sink
    if sink is None:
        return
    try:
        kept = progress_values(values)
        if kept:
            sink.report(kept)
    except Exception:  # a report must never fail training
        _logger.debug("a progress report was dropped", exc_info=True)
