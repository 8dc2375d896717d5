"""Predictions kept on the node: written as a new dataset in the node's data folder,
registered with their provenance, and summarised for the researcher.

The file is ``<data_dir>/predictions/<request id>.csv`` with the columns ``row`` (the row of
the source dataset) and ``prediction``; it is registered under a new dataset id, tagged
``prediction``, with its provenance: the source dataset, the job and model, the plan id, the
request id and the time. Only :func:`summarise`'s summary leaves the node.
"""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from broker_net.prediction_messages import PredictRequest
from node_agent.datasets import DatasetEntry, DatasetRegistry
from node_agent.settings import NodeSettings

PREDICTION_TAG = "prediction"
"""The tag every prediction dataset carries."""

_MAX_CLASSES = 100
"""More distinct predicted classes than this are summarised as values."""


def summarise(predictions: npt.NDArray[np.float64], classifier: bool) -> dict[str, Any]:
    """What the researcher learns of the predictions: ``kind`` ``classes`` with
    ``class_counts`` (class -> rows), or ``values`` with ``mean`` and ``std``."""
    classes, counts = np.unique(predictions, return_counts=True)
    if classifier and len(classes) <= _MAX_CLASSES:
        return {
            "kind": "classes",
            "class_counts": {_label(c): int(n) for c, n in zip(classes, counts, strict=True)},
        }
    return {
        "kind": "values",
        "mean": float(np.mean(predictions)) if len(predictions) else 0.0,
        "std": float(np.std(predictions)) if len(predictions) else 0.0,
    }


def keep_predictions(
    registry: DatasetRegistry,
    settings: NodeSettings,
    request: PredictRequest,
    source: DatasetEntry,
    predictions: npt.NDArray[np.float64],
    plan_id: str,
) -> DatasetEntry:
    """Write ``predictions`` to the node's data folder and register them with their
    provenance; return the new dataset."""
    folder = settings.data_dir / "predictions"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{request.request_id}.csv"
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["row", "prediction"])
        writer.writerows([index, repr(float(value))] for index, value in enumerate(predictions))
    provenance = {
        "kind": "prediction",
        "source_dataset": source.dataset_id,
        "job_id": request.job_id,
        "model": request.model,
        "round": request.round,
        "experiment_id": request.experiment_id,
        "plan_id": plan_id,
        "plan_class": request.training_plan_class,
        "request_id": request.request_id,
        "researcher_id": request.researcher_id,
        "created_at": datetime.now(UTC).isoformat(),
    }
    return registry.add(
        path,
        name=f"predictions-{source.name}",
        tags=[PREDICTION_TAG],
        description=f"predictions on {source.dataset_id} by {request.model or 'a model'} "
        f"of job {request.job_id or '?'}",
        provenance=provenance,
    )


def _label(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
