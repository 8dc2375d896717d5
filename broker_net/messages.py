"""Typed messages exchanged between researchers and node agents.

Every message is a pydantic model with a ``type`` tag; :data:`AnyMessage` is the discriminated
union of all of them. Requests carry a ``request_id``; every reply and every
:class:`ErrorMessage` echoes it, so the researcher can always match an answer to its question.
Replies also carry the node's own ``received_at`` / ``replied_at`` timestamps, from which the
researcher derives each node's processing time.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from broker_net.codes import ErrorCode, PreprocStep, PreprocType, TrainingPlanStatus
from broker_net.message_base import MessageBase, ReplyBase, RequestBase, utc_now
from broker_net.progress_messages import ProgressMessage


class DatasetInfo(BaseModel):
    """What a node tells about one of its datasets (never the data itself)."""

    model_config = ConfigDict(extra="forbid")

    dataset_id: str
    name: str
    tags: list[str] = Field(default_factory=list)
    format: str
    shape: list[int] = Field(default_factory=list)
    columns: list[str] = Field(default_factory=list)
    dtypes: dict[str, str] = Field(default_factory=dict)
    description: str = ""


# --- ping and list ------------------------------------------------------------------------------


class PingRequest(RequestBase):
    """Ask a node whether it is alive."""

    type: Literal["ping_request"] = "ping_request"


class PingReply(ReplyBase):
    """A node's answer to :class:`PingRequest`."""

    type: Literal["ping_reply"] = "ping_reply"
    agent_version: str = ""


class ListRequest(RequestBase):
    """Ask a node for its datasets, optionally only those carrying all ``tags``."""

    type: Literal["list_request"] = "list_request"
    tags: list[str] = Field(default_factory=list)


class ListReply(ReplyBase):
    """A node's datasets."""

    type: Literal["list_reply"] = "list_reply"
    success: bool = True
    datasets: list[DatasetInfo] = Field(default_factory=list)

    @property
    def count(self) -> int:
        """Number of datasets listed."""
        return len(self.datasets)


# --- federated analytics -----------------------------------------------------------------------


class FARequest(RequestBase):
    """Ask a node for statistics over one of its datasets.

    Exactly one of ``stats`` (a flat list of statistic names, applied to the columns chosen by
    ``dataset_schema``) and ``stats_args`` (per-column fine control) must be given;
    ``stats_args`` already names its columns, so it excludes ``dataset_schema``.
    """

    type: Literal["fa_request"] = "fa_request"
    experiment_id: str = Field(min_length=1)
    fa_id: str = Field(min_length=1)
    dataset_id: str = Field(min_length=1)
    stats: list[str] | None = None
    stats_args: dict[str, Any] | None = None
    dataset_schema: list[str] | dict[str, Any] | None = None
    secagg_arguments: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check_stats(self) -> FARequest:
        if not self.stats and not self.stats_args:
            raise ValueError("at least one of 'stats' or 'stats_args' must be provided")
        if self.stats and self.stats_args:
            raise ValueError("'stats' and 'stats_args' are mutually exclusive")
        if self.stats_args and self.dataset_schema is not None:
            raise ValueError("'stats_args' and 'dataset_schema' are mutually exclusive: "
                             "'stats_args' already names its columns")  # fmt: skip
        return self


class FAReply(ReplyBase):
    """A node's statistics. Plain replies fill ``output``; encrypted ones fill
    ``params_encrypted`` and ``output_schema`` instead."""

    type: Literal["fa_reply"] = "fa_reply"
    experiment_id: str = Field(min_length=1)
    fa_id: str = Field(min_length=1)
    stats: list[str] | None = None
    output: dict[str, Any] | None = None
    encrypted: bool = False
    params_encrypted: list[Any] | None = None
    output_schema: list[Any] | None = None

    @model_validator(mode="after")
    def _check_output(self) -> FAReply:
        if self.encrypted:
            if self.output is not None:
                raise ValueError("an encrypted FAReply must not carry a plain 'output'")
            if self.params_encrypted is None or self.output_schema is None:
                raise ValueError("an encrypted FAReply needs 'params_encrypted' and "
                                 "'output_schema'")  # fmt: skip
        else:
            if self.output is None:
                raise ValueError("a plain FAReply needs 'output'")
            if self.params_encrypted is not None or self.output_schema is not None:
                raise ValueError("a plain FAReply must not carry 'params_encrypted' or "
                                 "'output_schema'")  # fmt: skip
        return self


# --- preprocessing -----------------------------------------------------------------------------


class PreprocRequest(RequestBase):
    """Ask a node to run one step of a preprocessing method on a dataset."""

    type: Literal["preproc_request"] = "preproc_request"
    experiment_id: str = Field(min_length=1)
    dataset_id: str = Field(min_length=1)
    preproc_type: PreprocType
    preproc_step: PreprocStep
    preproc_id: str = Field(min_length=1)
    preproc_args: dict[str, Any] = Field(default_factory=dict)
    state_id: str | None = None


class PreprocReply(ReplyBase):
    """Result of a preprocessing step; ``state_id`` names where the node keeps its state."""

    type: Literal["preproc_reply"] = "preproc_reply"
    experiment_id: str = Field(min_length=1)
    preproc_id: str = Field(min_length=1)
    success: bool = True
    preproc_output: dict[str, Any] = Field(default_factory=dict)
    state_id: str | None = None
    msg: str = ""


# --- training ----------------------------------------------------------------------------------


class TrainRequest(RequestBase):
    """Ask a node to train (or only evaluate) a training plan for one round."""

    type: Literal["train_request"] = "train_request"
    experiment_id: str = Field(min_length=1)
    round: int = Field(ge=0)
    training: bool = True
    training_plan: str = Field(min_length=1)
    training_plan_class: str = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)
    training_args: dict[str, Any] = Field(default_factory=dict)
    model_args: dict[str, Any] = Field(default_factory=dict)
    dataset_id: str = Field(min_length=1)
    state_id: str | None = None
    aggregator_args: dict[str, Any] = Field(default_factory=dict)
    secagg_arguments: dict[str, Any] | None = None
    """``{"secagg_id", "round"}``: answer with a masked vector instead of plain parameters."""
    optim_aux_var: dict[str, Any] | None = None
    """Optimizer auxiliary variables, plain or encrypted (``{"encrypted", "alg"}``); the node
    answers an encrypted one with an encrypted one."""
    encrypt_params: bool = False
    """``params`` is encrypted for the node, which encrypts its reply's ``params`` too."""


class TrainReply(ReplyBase):
    """A node's updated parameters, sample size, timing and local metrics for one round."""

    type: Literal["train_reply"] = "train_reply"
    experiment_id: str = Field(min_length=1)
    round: int = Field(ge=0)
    success: bool
    dataset_id: str = ""
    params: dict[str, Any] | None = None
    sample_size: int | None = Field(default=None, ge=0)
    timing: dict[str, float] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    state_id: str | None = None
    optim_aux_var: dict[str, Any] | None = None
    encrypted: bool = False
    msg: str = ""


# --- secure aggregation ------------------------------------------------------------------------

SecaggStep: TypeAlias = Literal["keys", "shares", "deliver", "reveal"]
"""The exchanges of secure aggregation, in order (see :mod:`broker_net.crypto.secagg`)."""


class SecaggRequest(RequestBase):
    """One exchange of secure aggregation, to set a context up or to unmask one of its rounds:
    ``keys`` carries the ``context`` (the node answers its signed public keys), ``shares`` every
    participant's ``public_keys`` (it answers its seed shares, encrypted for each peer),
    ``deliver`` the ``shares`` others made for it (setup is over), ``reveal`` the ``round`` and
    its ``survivors`` (it answers its shares of their self seeds and of the dropped nodes' keys).
    See :mod:`broker_net.crypto.secagg`.
    """

    type: Literal["secagg_request"] = "secagg_request"
    secagg_id: str = Field(min_length=1)
    experiment_id: str = Field(min_length=1)
    step: SecaggStep
    context: dict[str, Any] | None = None
    public_keys: list[dict[str, Any]] = Field(default_factory=list)
    shares: dict[str, bytes] = Field(default_factory=dict)
    round: int | None = Field(default=None, ge=0)
    survivors: list[str] = Field(default_factory=list)


class SecaggReply(ReplyBase):
    """A node's answer to one :class:`SecaggRequest` step: its signed ``public_keys``
    (``keys``), its encrypted ``shares`` by peer (``shares``), nothing (``deliver``) or its
    ``revealed`` shares (``reveal``)."""

    type: Literal["secagg_reply"] = "secagg_reply"
    secagg_id: str = Field(min_length=1)
    experiment_id: str = Field(min_length=1)
    step: SecaggStep
    public_keys: dict[str, Any] | None = None
    shares: dict[str, bytes] = Field(default_factory=dict)
    revealed: dict[str, Any] | None = None


# --- training plans ----------------------------------------------------------------------------


class TrainingPlanStatusRequest(RequestBase):
    """Ask a node whether a training plan is approved there."""

    type: Literal["training_plan_status_request"] = "training_plan_status_request"
    experiment_id: str = Field(min_length=1)
    training_plan: str = Field(min_length=1)


class TrainingPlanStatusReply(ReplyBase):
    """Approval status of a training plan on a node."""

    type: Literal["training_plan_status_reply"] = "training_plan_status_reply"
    experiment_id: str = Field(min_length=1)
    success: bool
    approval_obligation: bool
    status: TrainingPlanStatus
    training_plan_id: str | None = None
    msg: str = ""


class ApprovalRequest(RequestBase):
    """Submit a training plan for review by the node's operator."""

    type: Literal["approval_request"] = "approval_request"
    description: str = ""
    training_plan: str = Field(min_length=1)


class ApprovalReply(ReplyBase):
    """``success`` means the plan is registered for review, not that it is approved;
    ``status`` says where it stands."""

    type: Literal["approval_reply"] = "approval_reply"
    success: bool
    training_plan_id: str | None = None
    status: TrainingPlanStatus = TrainingPlanStatus.PENDING
    msg: str = ""


# --- cancellation ------------------------------------------------------------------------------

CancelState: TypeAlias = Literal["running", "queued", "finished", "unknown"]
"""Where the work a :class:`CancelRequest` names stood when the cancel arrived."""


class CancelRequest(RequestBase):
    """Stop the work of request ``target_request_id`` (sent by the same researcher) on a node;
    the node answers that request with a ``CANCELLED`` error, and this one with a CancelReply."""

    type: Literal["cancel_request"] = "cancel_request"
    target_request_id: str = Field(min_length=1)


class CancelReply(ReplyBase):
    """``cancelled``: the work was stopped (it was ``running`` or ``queued``); otherwise it had
    ``finished``, or is ``unknown`` to the node (also a request of another researcher)."""

    type: Literal["cancel_reply"] = "cancel_reply"
    target_request_id: str = Field(min_length=1)
    cancelled: bool
    state: CancelState


# --- presence and errors -----------------------------------------------------------------------


class Heartbeat(MessageBase):
    """Published by every node agent on the presence exchange at a fixed interval."""

    type: Literal["heartbeat"] = "heartbeat"
    node_id: str = Field(min_length=1)
    node_name: str = ""
    agent_version: str = ""
    sent_at: datetime = Field(default_factory=utc_now)
    interval: float = Field(gt=0)
    datasets: list[str] = Field(default_factory=list)
    stopping: bool = False


class ErrorMessage(MessageBase):
    """A node's answer when it could not do what was asked.

    ``request_id`` is set whenever the request's id could be read, so the researcher can match
    the error to its request; it is ``None`` only for bytes too broken to carry an id.
    """

    type: Literal["error"] = "error"
    request_id: str | None = None
    researcher_id: str | None = None
    node_id: str = Field(min_length=1)
    node_name: str = ""
    code: ErrorCode
    message: str
    details: dict[str, Any] = Field(default_factory=dict)
    received_at: datetime | None = None
    replied_at: datetime | None = None


RequestMessage: TypeAlias = (
    PingRequest | ListRequest | FARequest | PreprocRequest | TrainRequest
    | TrainingPlanStatusRequest | ApprovalRequest | SecaggRequest | CancelRequest
)  # fmt: skip
ReplyMessage: TypeAlias = (
    PingReply | ListReply | FAReply | PreprocReply | TrainReply | TrainingPlanStatusReply
    | ApprovalReply | SecaggReply | CancelReply
)  # fmt: skip
AnyMessage: TypeAlias = Annotated[
    RequestMessage | ReplyMessage | Heartbeat | ErrorMessage | ProgressMessage,
    Field(discriminator="type"),
]

MESSAGE_TYPES: dict[str, type[BaseModel]] = {
    cls.model_fields["type"].default: cls
    for cls in (
        PingRequest, PingReply, ListRequest, ListReply, FARequest, FAReply, PreprocRequest,
        PreprocReply, TrainRequest, TrainReply, TrainingPlanStatusRequest,
        TrainingPlanStatusReply, ApprovalRequest, ApprovalReply, SecaggRequest, SecaggReply,
        CancelRequest, CancelReply, Heartbeat, ErrorMessage, ProgressMessage,
    )
}  # fmt: skip
"""Every message class by its ``type`` tag."""

REPLY_TYPES: dict[type[BaseModel], type[BaseModel]] = {
    PingRequest: PingReply,
    ListRequest: ListReply,
    FARequest: FAReply,
    PreprocRequest: PreprocReply,
    TrainRequest: TrainReply,
    TrainingPlanStatusRequest: TrainingPlanStatusReply,
    ApprovalRequest: ApprovalReply,
    SecaggRequest: SecaggReply,
    CancelRequest: CancelReply,
}
"""The reply class expected for each request class."""

message_adapter: TypeAdapter[AnyMessage] = TypeAdapter(AnyMessage)
"""Validates a plain mapping into the message class its ``type`` names."""
