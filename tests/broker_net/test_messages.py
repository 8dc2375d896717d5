"""Message models: their validation rules, enums, ids and the request/reply pairing."""

from __future__ import annotations

import typing
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from broker_net.codes import ErrorArea, ErrorCode, PreprocStep, PreprocType, TrainingPlanStatus
from broker_net.messages import (
    MESSAGE_TYPES,
    REPLY_TYPES,
    ApprovalReply,
    ApprovalRequest,
    DatasetInfo,
    ErrorMessage,
    FAReply,
    FARequest,
    Heartbeat,
    ListReply,
    PingReply,
    PingRequest,
    PreprocRequest,
    ReplyMessage,
    RequestMessage,
    TrainingPlanStatusReply,
    TrainReply,
    TrainRequest,
    message_adapter,
)
from broker_net.progress_messages import ProgressMessage
from broker_net.version import PROTOCOL_VERSION

FA_IDS = {"researcher_id": "alice", "experiment_id": "exp", "fa_id": "fa1", "dataset_id": "ds"}
FA_REPLY_IDS = {
    "request_id": "r1",
    "researcher_id": "alice",
    "node_id": "n1",
    "experiment_id": "exp",
    "fa_id": "fa1",
}
TRAIN = {
    "researcher_id": "alice",
    "experiment_id": "exp",
    "round": 0,
    "training_plan": "class Plan: ...",
    "training_plan_class": "Plan",
    "dataset_id": "ds",
}


EMPTY = "String should have at least 1 character"


def _problem(caught: pytest.ExceptionInfo[ValidationError]) -> str:
    """The one error pydantic reports, as ``location: message``."""
    errors = caught.value.errors()
    assert len(errors) == 1, errors
    location = ".".join(str(part) for part in errors[0]["loc"])
    return f"{location}: {errors[0]['msg']}" if location else errors[0]["msg"]


# --- FARequest ---------------------------------------------------------------------------------


def test_fa_request_with_stats() -> None:
    request = FARequest(**FA_IDS, stats=["mean", "std"], dataset_schema=["age"])
    assert request.stats == ["mean", "std"]


def test_fa_request_with_stats_args() -> None:
    request = FARequest(**FA_IDS, stats_args={"age": ["mean"]})
    assert request.stats_args == {"age": ["mean"]}


@pytest.mark.parametrize("empty", [{}, {"stats": []}, {"stats_args": {}}, {"stats": None}])
def test_fa_request_needs_stats_or_stats_args(empty: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as caught:
        FARequest(**FA_IDS, **empty)
    assert _problem(caught) == (
        "Value error, at least one of 'stats' or 'stats_args' must be provided"
    )


def test_fa_request_stats_and_stats_args_are_exclusive() -> None:
    with pytest.raises(ValidationError) as caught:
        FARequest(**FA_IDS, stats=["mean"], stats_args={"age": ["mean"]})
    assert _problem(caught) == "Value error, 'stats' and 'stats_args' are mutually exclusive"


def test_fa_request_stats_args_excludes_dataset_schema() -> None:
    with pytest.raises(ValidationError) as caught:
        FARequest(**FA_IDS, stats_args={"age": ["mean"]}, dataset_schema=["age"])
    assert _problem(caught) == (
        "Value error, 'stats_args' and 'dataset_schema' are mutually exclusive: "
        "'stats_args' already names its columns"
    )


# --- FAReply -----------------------------------------------------------------------------------


def test_plain_fa_reply() -> None:
    reply = FAReply(**FA_REPLY_IDS, output={"age": {"mean": 41.5}})
    assert reply.encrypted is False


def test_encrypted_fa_reply() -> None:
    reply = FAReply(**FA_REPLY_IDS, encrypted=True, params_encrypted=[1, 2], output_schema=["a"])
    assert reply.output is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "a plain FAReply needs 'output'"),
        (
            {"output": {}, "params_encrypted": [1]},
            "a plain FAReply must not carry 'params_encrypted' or 'output_schema'",
        ),
        (
            {"output": {}, "output_schema": ["a"]},
            "a plain FAReply must not carry 'params_encrypted' or 'output_schema'",
        ),
        (
            {"encrypted": True, "output": {}, "params_encrypted": [1], "output_schema": ["a"]},
            "an encrypted FAReply must not carry a plain 'output'",
        ),
        (
            {"encrypted": True, "params_encrypted": [1]},
            "an encrypted FAReply needs 'params_encrypted' and 'output_schema'",
        ),
        (
            {"encrypted": True, "output_schema": ["a"]},
            "an encrypted FAReply needs 'params_encrypted' and 'output_schema'",
        ),
    ],
)
def test_fa_reply_output_matches_encryption(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        FAReply(**FA_REPLY_IDS, **fields)
    assert _problem(caught) == f"Value error, {message}"


# --- enums -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "fields", "location", "expected"),
    [
        (
            PreprocRequest,
            {"preproc_type": "normalize", "preproc_step": "fit"},
            "preproc_type",
            "Input should be 'standardize' or 'impute'",
        ),
        (
            PreprocRequest,
            {"preproc_type": "impute", "preproc_step": "transform"},
            "preproc_step",
            "Input should be 'fit' or 'apply'",
        ),
        (
            TrainingPlanStatusReply,
            {"status": "approved"},
            "status",
            "Input should be 'Approved', 'Pending', 'Rejected' or 'Not registered'",
        ),
        (ErrorMessage, {"code": 99}, "code", "Input should be 100, 101, 102, "),
        (ErrorMessage, {"code": "PLAN_NOT_APPROVED"}, "code", "Input should be 100, 101, "),
    ],
)
def test_bad_enum_values_are_refused(
    model: type[BaseModel], fields: dict[str, Any], location: str, expected: str
) -> None:
    bases: dict[type[BaseModel], dict[str, Any]] = {
        PreprocRequest: {
            "researcher_id": "alice",
            "experiment_id": "exp",
            "dataset_id": "ds",
            "preproc_id": "p1",
        },
        TrainingPlanStatusReply: {
            "request_id": "r1",
            "researcher_id": "alice",
            "node_id": "n1",
            "experiment_id": "exp",
            "success": True,
            "approval_obligation": True,
        },
        ErrorMessage: {"node_id": "n1", "message": "boom"},
    }
    base = bases[model]
    with pytest.raises(ValidationError) as caught:
        model(**base, **fields)
    assert _problem(caught).startswith(f"{location}: {expected}")


def test_enum_values_are_accepted_by_value() -> None:
    request = PreprocRequest(
        researcher_id="alice",
        experiment_id="exp",
        dataset_id="ds",
        preproc_id="p1",
        preproc_type="standardize",
        preproc_step="apply",
    )
    assert request.preproc_type is PreprocType.STANDARDIZE
    assert request.preproc_step is PreprocStep.APPLY
    error = ErrorMessage(node_id="n1", message="boom", code=305)
    assert error.code is ErrorCode.PLAN_FAILED
    assert TrainingPlanStatus("Not registered") is TrainingPlanStatus.NOT_REGISTERED


# --- ids and numbers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "fields", "problem"),
    [
        (PingRequest, {}, "researcher_id: Field required"),
        (PingRequest, {"researcher_id": ""}, f"researcher_id: {EMPTY}"),
        (PingRequest, {"researcher_id": "a", "request_id": ""}, f"request_id: {EMPTY}"),
        (PingReply, {"researcher_id": "a", "node_id": "n"}, "request_id: Field required"),
        (PingReply, {"researcher_id": "a", "request_id": "r"}, "node_id: Field required"),
        (Heartbeat, {"interval": 5}, "node_id: Field required"),
        (Heartbeat, {"node_id": "n", "interval": 0}, "interval: Input should be greater than 0"),
        (ErrorMessage, {"message": "m", "code": 100}, "node_id: Field required"),
        (TrainRequest, {**TRAIN, "round": -1}, "round: Input should be greater than or equal to 0"),
        (TrainRequest, {**TRAIN, "experiment_id": ""}, f"experiment_id: {EMPTY}"),
        (PingRequest, {"researcher_id": "a", "x": 1}, "x: Extra inputs are not permitted"),
    ],
)  # fmt: skip
def test_missing_or_bad_fields_are_reported(
    model: type[BaseModel], fields: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        model(**fields)
    assert _problem(caught) == problem


def test_train_reply_refuses_negative_round_and_sample_size() -> None:
    ids = {"request_id": "r", "researcher_id": "a", "node_id": "n", "experiment_id": "e"}
    with pytest.raises(ValidationError) as caught:
        TrainReply(**ids, round=-2, success=True, sample_size=-1)
    assert {error["loc"] for error in caught.value.errors()} == {("round",), ("sample_size",)}


def test_validation_errors_name_the_model() -> None:
    with pytest.raises(ValidationError) as caught:
        TrainRequest(**{**TRAIN, "round": -1})
    assert str(caught.value).startswith("1 validation error for TrainRequest\nround\n")


# --- defaults ----------------------------------------------------------------------------------


@pytest.mark.parametrize("request_class", list(REPLY_TYPES), ids=lambda cls: cls.__name__)
def test_every_request_has_a_fresh_default_request_id(request_class: type[BaseModel]) -> None:
    field = request_class.model_fields["request_id"]
    assert not field.is_required()
    first, second = (
        field.get_default(call_default_factory=True),
        field.get_default(call_default_factory=True),
    )
    assert first.startswith("request_")
    assert first != second


def test_request_ids_differ_between_instances() -> None:
    assert PingRequest(researcher_id="a").request_id != PingRequest(researcher_id="a").request_id


def test_messages_carry_the_protocol_version() -> None:
    assert PingRequest(researcher_id="a").protocol_version == PROTOCOL_VERSION


def test_heartbeat_sent_at_defaults_to_an_aware_now() -> None:
    beat = Heartbeat(node_id="n1", interval=5)
    assert beat.sent_at.tzinfo is not None


def test_list_reply_counts_its_datasets() -> None:
    info = DatasetInfo(dataset_id="d1", name="Sales", format="csv")
    reply = ListReply(request_id="r", researcher_id="a", node_id="n", datasets=[info, info])
    assert reply.count == 2


def test_approval_reply_defaults_to_pending() -> None:
    reply = ApprovalReply(request_id="r", researcher_id="a", node_id="n", success=True)
    assert reply.status is TrainingPlanStatus.PENDING


# --- error codes -------------------------------------------------------------------------------


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda code: code.name)
def test_error_code_area_is_its_hundreds_digit(code: ErrorCode) -> None:
    assert code.area is ErrorArea(code.value // 100)


def test_error_code_areas() -> None:
    assert ErrorCode.MALFORMED_MESSAGE.area is ErrorArea.PROTOCOL
    assert ErrorCode.BAD_SIGNATURE.area is ErrorArea.SECURITY
    assert ErrorCode.DATASET_NOT_FOUND.area is ErrorArea.NODE
    assert ErrorCode.TRANSFER_STALLED.area is ErrorArea.TRANSFER
    assert ErrorCode.NODE_UNREACHABLE.area is ErrorArea.RESEARCHER


def test_every_area_has_a_generic_code() -> None:
    assert {area: ErrorCode(area.value * 100).area for area in ErrorArea} == {
        area: area for area in ErrorArea
    }


# --- the message catalogue ---------------------------------------------------------------------


def _union_members(alias: Any) -> set[type]:
    return set(typing.get_args(alias))


def test_reply_types_cover_every_request() -> None:
    assert set(REPLY_TYPES) == _union_members(RequestMessage)
    assert set(REPLY_TYPES.values()) == _union_members(ReplyMessage)


def test_replies_echo_their_request_fields() -> None:
    for request_class, reply_class in REPLY_TYPES.items():
        assert request_class.__name__.removesuffix("Request") == reply_class.__name__.removesuffix(
            "Reply"
        )
        assert {"request_id", "researcher_id"} <= set(reply_class.model_fields)
        assert "node_id" in reply_class.model_fields


def test_message_types_are_keyed_by_their_type_tag() -> None:
    assert len(MESSAGE_TYPES) == 21
    for tag, cls in MESSAGE_TYPES.items():
        assert cls.model_fields["type"].default == tag
    assert set(MESSAGE_TYPES.values()) == (
        _union_members(RequestMessage)
        | _union_members(ReplyMessage)
        | {Heartbeat, ErrorMessage, ProgressMessage}
    )


def test_message_adapter_picks_the_class_by_type() -> None:
    message = message_adapter.validate_python(
        {"type": "approval_request", "researcher_id": "a", "training_plan": "code"}
    )
    assert isinstance(message, ApprovalRequest)


def test_message_adapter_names_an_unknown_type() -> None:
    with pytest.raises(ValidationError) as caught:
        message_adapter.validate_python({"type": "shutdown", "researcher_id": "a"})
    assert caught.value.errors()[0]["type"] == "union_tag_invalid"
    assert "'shutdown'" in caught.value.errors()[0]["msg"]
