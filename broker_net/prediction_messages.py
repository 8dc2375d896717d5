"""Prediction: run a trained model on a node's dataset, keep the predictions on the node.

A :class:`PredictRequest` carries a training plan, the trained parameters (plain, or encrypted
for the node with ``encrypt_params``) and which model they are (``job_id``, ``model``,
``round``). The node runs the plan only if it is approved there, in its sandboxed plan process,
writes the predictions to a new dataset in its data folder and registers it with its
provenance. The :class:`PredictReply` names that dataset and carries a summary only (row count,
per-class counts or mean and standard deviation), never the predictions.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from broker_net.message_base import ReplyBase, RequestBase


class PredictRequest(RequestBase):
    """Ask a node to predict with a trained model on one of its datasets."""

    type: Literal["predict_request"] = "predict_request"
    experiment_id: str = Field(min_length=1)
    job_id: str = ""
    """The job whose training produced the model (provenance)."""
    model: str = ""
    """Which model of that job, in words, e.g. ``train/best`` (provenance)."""
    round: int = Field(default=0, ge=0)
    """The training round after which the model was saved; binds encrypted parameters."""
    training_plan: str = Field(min_length=1)
    training_plan_class: str = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)
    model_args: dict[str, Any] = Field(default_factory=dict)
    dataset_id: str = Field(min_length=1)
    state_id: str | None = None
    encrypt_params: bool = False
    """``params`` is encrypted for the node."""


class PredictReply(ReplyBase):
    """Where a node keeps the predictions, and their summary.

    ``summary`` holds ``kind`` (``classes`` or ``values``), and ``class_counts`` (class ->
    rows) for classes or ``mean`` and ``std`` for values.
    """

    type: Literal["predict_reply"] = "predict_reply"
    experiment_id: str = Field(min_length=1)
    success: bool
    dataset_id: str = ""
    prediction_dataset_id: str = ""
    n_rows: int = Field(default=0, ge=0)
    summary: dict[str, Any] = Field(default_factory=dict)
    msg: str = ""
