"""Preprocessing driven by the researcher: imputation and standardisation with global statistics.

The researcher computes global statistics with federated analytics, then sends them in a
:class:`~broker_net.messages.PreprocRequest`. Each dataset seen through preprocessing is a
*view*: a node state (see :mod:`node_agent.state`) holding

- ``dataset_id``: the dataset the view reads;
- ``steps``: the fitted steps, oldest first, each ``{"type", "preproc_id", ...parameters}``;
- ``table`` (after ``APPLY``): ``{"columns", "values"}``, the dataset transformed by every step.

``FIT`` creates a new state whose steps are those of ``state_id`` (when given, so steps chain)
plus the new one, and returns its id; earlier state ids keep their meaning. ``APPLY`` transforms
the dataset through the steps of ``state_id`` and stores the result in that same state.
:func:`load_training_table` reads a dataset through a view: the stored table when the view was
applied, else the raw dataset with the steps applied on the fly (the same values).

``preproc_args`` by type, for ``FIT``:

- ``IMPUTE``: ``{"fill_values": {column: value}, "strategy": "mean"}``; the strategy (mean,
  median, constant...) is a label kept for the record, the values are used as given.
- ``STANDARDIZE``: ``{"mean": {column: mean}, "std": {column: std}}``, ``std`` positive;
  each column becomes ``(x - mean) / std``, missing values stay missing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from broker_net.codes import PreprocStep, PreprocType
from broker_net.messages import PreprocRequest
from node_agent.datasets import DatasetEntry, DatasetRegistry, Table
from node_agent.state import NodeStateStore


class PreprocessingError(ValueError):
    """Raised when a preprocessing request is inconsistent: bad arguments, a state of another
    dataset, an APPLY without a FIT."""


@dataclass(frozen=True)
class PreprocResult:
    """What a preprocessing step returns to the researcher."""

    state_id: str
    output: dict[str, Any]


def run_preprocessing(
    request: PreprocRequest, datasets: DatasetRegistry, states: NodeStateStore
) -> PreprocResult:
    """Run one FIT or APPLY step of a preprocessing request.

    Raises:
        DatasetNotFoundError: the dataset is unknown.
        StateNotFoundError: ``request.state_id`` is unknown.
        DataLoadingError: the dataset file cannot be read (APPLY).
        PreprocessingError: the request is inconsistent or its arguments invalid.
    """
    entry = datasets.get(request.dataset_id)
    if request.preproc_step is PreprocStep.FIT:
        return _fit(request, entry, states)
    return _apply(request, datasets, states)


def _fit(request: PreprocRequest, entry: DatasetEntry, states: NodeStateStore) -> PreprocResult:
    steps: list[dict[str, Any]] = []
    if request.state_id is not None:
        steps = list(_view(states, request.state_id, request.dataset_id)["steps"])
    numeric = [name for name in entry.columns if entry.dtypes.get(name) != "str"]
    step = _fitted_step(request.preproc_type, request.preproc_args, numeric)
    step["preproc_id"] = request.preproc_id
    state_id = states.new_state_id()
    states.save(
        state_id, {"kind": "preprocessing", "dataset_id": entry.dataset_id, "steps": [*steps, step]}
    )
    output = {"step": request.preproc_step.value, "columns": _step_columns(step)}
    return PreprocResult(state_id, {**output, "steps": len(steps) + 1})


def _fitted_step(kind: PreprocType, args: Mapping[str, Any], numeric: list[str]) -> dict[str, Any]:
    if kind is PreprocType.IMPUTE:
        fill = _numbers(args, "fill_values", numeric)
        return {"type": kind.value, "fill_values": fill, "strategy": str(args.get("strategy", ""))}
    means = _numbers(args, "mean", numeric)
    stds = _numbers(args, "std", numeric)
    if set(means) != set(stds):
        raise PreprocessingError("'mean' and 'std' must name the same columns")
    bad = sorted(name for name, std in stds.items() if std <= 0)
    if bad:
        raise PreprocessingError(f"'std' must be positive; it is not for {', '.join(bad)}")
    return {"type": kind.value, "mean": means, "std": stds}


def _numbers(args: Mapping[str, Any], key: str, numeric: list[str]) -> dict[str, float]:
    given = args.get(key)
    if not isinstance(given, Mapping) or not given:
        raise PreprocessingError(f"preproc_args needs {key!r}: a mapping of column to number")
    unknown = sorted(set(given) - set(numeric))
    if unknown:
        raise PreprocessingError(f"unknown or non-numeric columns in {key!r}: {unknown}")
    try:
        values = {str(name): float(value) for name, value in given.items()}
    except (TypeError, ValueError) as exc:
        raise PreprocessingError(f"{key!r} must hold numbers") from exc
    if not all(math.isfinite(value) for value in values.values()):
        raise PreprocessingError(f"{key!r} must hold finite numbers")
    return values


def _step_columns(step: Mapping[str, Any]) -> list[str]:
    params = step["fill_values"] if step["type"] == PreprocType.IMPUTE.value else step["mean"]
    return sorted(params)


def _apply(
    request: PreprocRequest, datasets: DatasetRegistry, states: NodeStateStore
) -> PreprocResult:
    if request.state_id is None:
        raise PreprocessingError("APPLY needs the state_id returned by FIT")
    view = _view(states, request.state_id, request.dataset_id)
    steps: list[Mapping[str, Any]] = list(view["steps"])
    if steps[-1]["type"] != request.preproc_type.value:
        raise PreprocessingError(
            f"state {request.state_id!r} was fitted for {steps[-1]['type']!r}, "
            f"not {request.preproc_type.value!r}"
        )
    table = apply_steps(datasets.load(request.dataset_id), steps[:-1])
    missing_before = _missing_counts(table)
    table = apply_steps(table, steps[-1:])
    states.save(request.state_id, {"table": {"columns": table.columns, "values": table.values}})
    output: dict[str, Any] = {
        "step": request.preproc_step.value,
        "rows": table.n_rows,
        "columns": _step_columns(steps[-1]),
        "steps": len(steps),
    }
    if request.preproc_type is PreprocType.IMPUTE:
        after = _missing_counts(table)
        output["filled"] = {
            name: missing_before[name] - after[name] for name in _step_columns(steps[-1])
        }
    return PreprocResult(request.state_id, output)


def _missing_counts(table: Table) -> dict[str, int]:
    counts = np.isnan(table.values).sum(axis=0)
    return {name: int(count) for name, count in zip(table.columns, counts, strict=True)}


def _view(states: NodeStateStore, state_id: str, dataset_id: str) -> dict[str, Any]:
    view = states.load(state_id)
    if view.get("kind") != "preprocessing":
        raise PreprocessingError(f"state {state_id!r} is not a preprocessing state")
    if view["dataset_id"] != dataset_id:
        raise PreprocessingError(f"state {state_id!r} belongs to another dataset")
    return view


def apply_steps(table: Table, steps: Sequence[Mapping[str, Any]]) -> Table:
    """Return ``table`` transformed by each fitted step in turn (``table`` is left unchanged).

    Raises:
        PreprocessingError: a step names a column the table lacks, or has an unknown type.
    """
    values = table.values.copy()
    for step in steps:
        if step["type"] == PreprocType.IMPUTE.value:
            for name, fill in step["fill_values"].items():
                column = values[:, _index(table, name)]
                column[np.isnan(column)] = fill
        elif step["type"] == PreprocType.STANDARDIZE.value:
            for name, mean in step["mean"].items():
                j = _index(table, name)
                values[:, j] = (values[:, j] - mean) / step["std"][name]
        else:
            raise PreprocessingError(f"unknown preprocessing step {step['type']!r}")
    return Table(list(table.columns), values)


def _index(table: Table, name: str) -> int:
    try:
        return table.columns.index(name)
    except ValueError:
        raise PreprocessingError(f"the dataset has no numeric column {name!r}") from None


def load_training_table(
    datasets: DatasetRegistry, states: NodeStateStore, dataset_id: str, state_id: str | None
) -> Table:
    """Read ``dataset_id`` as seen through the preprocessing view ``state_id``.

    Without a state id this is the raw dataset. With one, it is the table stored by APPLY, or
    the raw dataset transformed by the view's steps when it was only fitted.

    Raises:
        DatasetNotFoundError: the dataset is unknown.
        StateNotFoundError: the state is unknown.
        DataLoadingError: the dataset file cannot be read.
        PreprocessingError: the state is not a view of this dataset.
    """
    datasets.get(dataset_id)
    if state_id is None:
        return datasets.load(dataset_id)
    view = _view(states, state_id, dataset_id)
    stored = view.get("table")
    if stored is not None:
        return Table(list(stored["columns"]), np.array(stored["values"], dtype=np.float64))
    return apply_steps(datasets.load(dataset_id), view["steps"])
