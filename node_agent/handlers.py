"""One async function per request type, and the registry the agent dispatches on.

Handlers run blocking work (SQLite, reading files, numpy over whole tables) in worker threads so
the event loop keeps serving pings and status requests. They answer with the matching reply,
or raise :class:`~node_agent.context.HandlerError`, whose message reaches the researcher: it
names what went wrong, never the data, paths or tracebacks (those go to the node's log).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import anyio.to_thread

from broker_net.codes import ErrorCode, TrainingPlanStatus
from broker_net.messages import (
    ApprovalReply,
    ApprovalRequest,
    FAReply,
    FARequest,
    ListReply,
    ListRequest,
    PingReply,
    PingRequest,
    PreprocReply,
    PreprocRequest,
    TrainingPlanStatusReply,
    TrainingPlanStatusRequest,
    TrainReply,
    TrainRequest,
)
from broker_net.prediction_messages import PredictReply, PredictRequest
from broker_net.version import __version__
from node_agent.analytics import AnalyticsArgumentError, statistics_for_request
from node_agent.context import HandlerError, NodeContext
from node_agent.control_variates import keep_client_variate, with_client_variate
from node_agent.datasets import DataLoadingError, DatasetNotFoundError
from node_agent.payloads import open_params, open_request, seal_reply
from node_agent.plan_workers import plan_workers_for
from node_agent.plans import PlanInvalidError, compute_plan_id
from node_agent.predictions import keep_predictions, summarise
from node_agent.preprocessing import PreprocessingError, load_training_table, run_preprocessing
from node_agent.progress import current_progress
from node_agent.runner import (
    DEFAULT_VALIDATION_FRACTION,
    PlanFailedError,
    PlanTimeoutError,
    TrainingDataError,
    run_prediction,
    run_training,
)
from node_agent.secagg_handlers import (
    handle_secagg,
    mask_params,
    mask_statistics,
    secagg_node_for,
)
from node_agent.state import StateNotFoundError

logger = logging.getLogger(__name__)

Handler = Callable[[Any, NodeContext], Awaitable[Any]]
"""``async def handler(request, context) -> reply``; raises HandlerError to answer an error."""


def _stamp(request: Any, context: NodeContext) -> dict[str, Any]:
    return {
        "request_id": request.request_id,
        "researcher_id": request.researcher_id,
        "node_id": context.node_id,
        "node_name": context.node_name,
    }


@contextmanager
def _errors_as(code: ErrorCode, what: str) -> Iterator[None]:
    """Turn the node's exceptions into HandlerErrors; anything unexpected becomes ``code``."""
    try:
        yield
    except HandlerError:
        raise
    except DatasetNotFoundError as exc:
        raise HandlerError(
            ErrorCode.DATASET_NOT_FOUND, str(exc), dataset_id=exc.dataset_id
        ) from exc
    except StateNotFoundError as exc:
        raise HandlerError(ErrorCode.STATE_NOT_FOUND, str(exc), state_id=exc.state_id) from exc
    except DataLoadingError as exc:
        logger.warning("%s: cannot read the dataset: %s", what, exc)
        raise HandlerError(ErrorCode.DATA_LOADING_FAILED, "the dataset could not be read") from exc
    except TrainingDataError as exc:
        raise HandlerError(ErrorCode.DATA_LOADING_FAILED, str(exc)) from exc
    except (AnalyticsArgumentError, PreprocessingError) as exc:
        raise HandlerError(ErrorCode.BAD_ARGUMENTS, str(exc)) from exc
    except PlanInvalidError as exc:
        raise HandlerError(ErrorCode.PLAN_INVALID, str(exc)) from exc
    except PlanTimeoutError as exc:
        raise HandlerError(ErrorCode.PLAN_TIMEOUT, str(exc)) from exc
    except PlanFailedError as exc:
        raise HandlerError(
            ErrorCode.PLAN_FAILED, str(exc), stage=exc.stage, error_type=exc.error_type
        ) from exc
    except Exception as exc:
        logger.exception("%s failed", what)
        raise HandlerError(code, f"{what} failed ({type(exc).__name__})") from exc


async def handle_ping(request: PingRequest, context: NodeContext) -> PingReply:
    """Answer a ping."""
    return PingReply(**_stamp(request, context), agent_version=__version__)


async def handle_list(request: ListRequest, context: NodeContext) -> ListReply:
    """List the node's datasets carrying every tag of the request."""
    with _errors_as(ErrorCode.NODE_ERROR, "listing datasets"):
        entries = await anyio.to_thread.run_sync(context.datasets.list, request.tags)
    return ListReply(**_stamp(request, context), datasets=[entry.to_info() for entry in entries])


async def handle_fa(request: FARequest, context: NodeContext) -> FAReply:
    """Compute the requested statistics over a dataset.

    With ``secagg_arguments`` the reply is encrypted: the additive totals behind count,
    missing, sum, mean, variance and std, masked (see
    :func:`node_agent.secagg_handlers.mask_statistics`), so the researcher learns only sums.

    Raises:
        HandlerError: DATASET_NOT_FOUND, DATA_LOADING_FAILED, BAD_ARGUMENTS (unknown statistic
            or column, bad options, a statistic secure aggregation cannot give),
            ANALYTICS_FAILED, SECAGG_FAILED.
    """
    if request.secagg_arguments:
        node, round_ = secagg_node_for(request, context)

        def mask() -> tuple[Any, list[dict[str, Any]]]:
            table = context.datasets.load(request.dataset_id)
            return mask_statistics(node, round_, table, request)

        with _errors_as(ErrorCode.ANALYTICS_FAILED, "federated analytics"):
            masked, schema = await anyio.to_thread.run_sync(mask)
        return FAReply(
            **_stamp(request, context),
            experiment_id=request.experiment_id,
            fa_id=request.fa_id,
            stats=request.stats,
            encrypted=True,
            params_encrypted=[masked],
            output_schema=schema,
        )

    def compute() -> dict[str, Any]:
        return statistics_for_request(context.datasets.load(request.dataset_id), request)

    with _errors_as(ErrorCode.ANALYTICS_FAILED, "federated analytics"):
        output = await anyio.to_thread.run_sync(compute)
    return FAReply(
        **_stamp(request, context),
        experiment_id=request.experiment_id,
        fa_id=request.fa_id,
        stats=request.stats,
        output=output,
    )


async def handle_preproc(request: PreprocRequest, context: NodeContext) -> PreprocReply:
    """Run one FIT or APPLY step of imputation or standardisation (see node_agent.preprocessing).

    Raises:
        HandlerError: DATASET_NOT_FOUND, STATE_NOT_FOUND, DATA_LOADING_FAILED, BAD_ARGUMENTS,
            PREPROCESSING_FAILED.
    """
    with _errors_as(ErrorCode.PREPROCESSING_FAILED, "preprocessing"):
        result = await anyio.to_thread.run_sync(
            run_preprocessing, request, context.datasets, context.states
        )
    return PreprocReply(
        **_stamp(request, context),
        experiment_id=request.experiment_id,
        preproc_id=request.preproc_id,
        preproc_output=result.output,
        state_id=result.state_id,
    )


async def handle_plan_status(
    request: TrainingPlanStatusRequest, context: NodeContext
) -> TrainingPlanStatusReply:
    """Tell whether a training plan is approved here, and whether approval is required.

    Raises:
        HandlerError: PLAN_INVALID when the source is not valid Python.
    """
    with _errors_as(ErrorCode.NODE_ERROR, "checking a training plan"):
        status = await anyio.to_thread.run_sync(context.plans.status, request.training_plan)
        plan_id = compute_plan_id(request.training_plan)
    obligation = context.settings.require_approval
    return TrainingPlanStatusReply(
        **_stamp(request, context),
        experiment_id=request.experiment_id,
        success=True,
        approval_obligation=obligation,
        status=status,
        training_plan_id=plan_id,
        msg="" if obligation else "this node does not require training plan approval",
    )


async def handle_approval(request: ApprovalRequest, context: NodeContext) -> ApprovalReply:
    """Register a training plan for the operator's review (Pending unless already known).

    Raises:
        HandlerError: PLAN_INVALID when the source is not valid Python.
    """
    register = partial(
        context.plans.register,
        request.training_plan,
        description=request.description,
        researcher_id=request.researcher_id,
    )
    with _errors_as(ErrorCode.NODE_ERROR, "registering a training plan"):
        record = await anyio.to_thread.run_sync(register)
    return ApprovalReply(
        **_stamp(request, context),
        success=True,
        training_plan_id=record.plan_id,
        status=record.status,
        msg=f"the training plan is {record.status.value.lower()} on this node",
    )


async def handle_train(request: TrainRequest, context: NodeContext) -> TrainReply:
    """Train (or, with ``training`` false, only evaluate) a plan on a dataset for one round.

    With ``settings.require_approval``, a plan that is not Approved is refused before anything
    of it runs; a plan the operator rejected is refused in every case. The data is the dataset
    seen through ``state_id`` (see :func:`node_agent.preprocessing.load_training_table`), its
    registered target column
    against every other column; ``training_args`` may set ``validation_fraction`` (0.2) and
    ``split_seed`` (0) of the node's train / validation split; a validation-only round may set
    the fraction to 1 to evaluate on every row (a test dataset).

    Encrypted parameters and auxiliary variables are decrypted first and the reply's encrypted
    in kind (see :mod:`node_agent.payloads`). A SCAFFOLD round gets the node's control variate
    added and keeps its update (see :mod:`node_agent.control_variates`). With
    ``secagg_arguments`` the reply's ``params`` are ``{"masked", "shapes"}``: the trained
    parameters weighted by the sample size and masked, so only their sum over the nodes can be
    read. What the plan reports while it trains goes to the researcher as progress (see
    :mod:`node_agent.progress`).

    Raises:
        HandlerError: PLAN_NOT_APPROVED, PLAN_INVALID, DATASET_NOT_FOUND, STATE_NOT_FOUND,
            DATA_LOADING_FAILED, BAD_ARGUMENTS, PLAN_TIMEOUT, PLAN_FAILED, DECRYPTION_FAILED,
            SECAGG_FAILED.
    """
    fraction, seed = _split_arguments(request.training_args, request.training)
    secagg = secagg_node_for(request, context) if request.secagg_arguments else None
    params, aux_var = open_request(request, context)
    with _errors_as(ErrorCode.NODE_ERROR, "training"):
        await _check_approved(request.training_plan, context)
        aux_var = await anyio.to_thread.run_sync(
            with_client_variate, context.states, request, aux_var
        )
        entry = await anyio.to_thread.run_sync(context.datasets.get, request.dataset_id)
        if entry.target is None:
            raise TrainingDataError(f"dataset {entry.dataset_id!r} has no registered target column")
        table = await anyio.to_thread.run_sync(
            load_training_table,
            context.datasets,
            context.states,
            request.dataset_id,
            request.state_id,
        )
        outcome = await run_training(
            request.training_plan,
            request.training_plan_class,
            table=table,
            target=entry.target,
            params=params,
            training_args=request.training_args,
            model_args=request.model_args,
            timeout=context.settings.plan_timeout,
            training=request.training,
            validation_fraction=fraction,
            split_seed=seed,
            aux_var=aux_var,
            workers=plan_workers_for(context),
            reuse_key=(request.researcher_id, request.experiment_id, request.dataset_id),
            on_progress=current_progress(),
        )
        await anyio.to_thread.run_sync(
            keep_client_variate, context.states, request, aux_var, outcome.aux_var
        )
    # Under secure aggregation only the masked parameters leave the node.
    plain = outcome.params if secagg is None else {}
    payloads = seal_reply(request, context, plain, outcome.aux_var)
    if secagg is not None:
        node, round_ = secagg
        masked = await anyio.to_thread.run_sync(
            mask_params, node, round_, outcome.params, outcome.sample_size
        )
        payloads.update(params=masked, encrypted=True)
    return TrainReply(
        **_stamp(request, context),
        experiment_id=request.experiment_id,
        round=request.round,
        success=True,
        dataset_id=request.dataset_id,
        sample_size=outcome.sample_size,
        timing=outcome.timing,
        metrics=outcome.metrics,
        state_id=request.state_id,
        model_version=request.model_version,
        **payloads,
    )


async def handle_predict(request: PredictRequest, context: NodeContext) -> PredictReply:
    """Predict with a trained model on a dataset; keep the predictions on the node.

    The plan is refused unless approved, as for training, and runs in the same sandboxed plan
    process; its features are every column of the dataset (seen through ``state_id``) but its
    registered target. The predictions become a new registered dataset with their provenance
    (see :mod:`node_agent.predictions`); the reply names it and carries only a summary.

    Raises:
        HandlerError: PLAN_NOT_APPROVED, PLAN_INVALID, DATASET_NOT_FOUND, STATE_NOT_FOUND,
            DATA_LOADING_FAILED, BAD_ARGUMENTS, PLAN_TIMEOUT, PLAN_FAILED, DECRYPTION_FAILED.
    """
    params = open_params(request, context)
    with _errors_as(ErrorCode.NODE_ERROR, "prediction"):
        plan_id = await _check_approved(request.training_plan, context)
        entry = await anyio.to_thread.run_sync(context.datasets.get, request.dataset_id)
        table = await anyio.to_thread.run_sync(
            load_training_table, context.datasets, context.states, request.dataset_id,
            request.state_id,
        )  # fmt: skip
        outcome = await run_prediction(
            request.training_plan, request.training_plan_class, table=table, target=entry.target,
            params=params, model_args=request.model_args, timeout=context.settings.plan_timeout,
            workers=plan_workers_for(context),
            reuse_key=(request.researcher_id, request.experiment_id, request.dataset_id),
        )  # fmt: skip
        kept = await anyio.to_thread.run_sync(
            keep_predictions, context.datasets, context.settings, request, entry,
            outcome.predictions, plan_id,
        )  # fmt: skip
    return PredictReply(
        **_stamp(request, context), experiment_id=request.experiment_id, success=True,
        dataset_id=request.dataset_id, prediction_dataset_id=kept.dataset_id,
        n_rows=len(outcome.predictions), summary=summarise(outcome.predictions, outcome.classifier),
    )  # fmt: skip


async def _check_approved(source: str, context: NodeContext) -> str:
    """The plan's id, when the node may run it.

    An operator's explicit rejection holds even where approval is not required.

    Raises:
        HandlerError: PLAN_NOT_APPROVED.
    """
    status = await anyio.to_thread.run_sync(context.plans.status, source)
    plan_id = compute_plan_id(source)
    refused = status is TrainingPlanStatus.REJECTED or (
        context.settings.require_approval and status is not TrainingPlanStatus.APPROVED
    )
    if refused:
        raise HandlerError(
            ErrorCode.PLAN_NOT_APPROVED,
            f"the training plan is not approved on this node (status: {status.value})",
            status=status.value, training_plan_id=plan_id,
        )  # fmt: skip
    return plan_id


def _split_arguments(training_args: dict[str, Any], training: bool) -> tuple[float, int]:
    """The split's fraction and seed; a validation-only round may hold out every row (1)."""
    fraction = training_args.get("validation_fraction", DEFAULT_VALIDATION_FRACTION)
    seed = training_args.get("split_seed", 0)
    number = isinstance(fraction, int | float) and not isinstance(fraction, bool)
    if not number or not (0 <= fraction < 1 or (fraction == 1 and not training)):
        limit = "[0, 1)" if training else "[0, 1]"
        raise HandlerError(ErrorCode.BAD_ARGUMENTS, f"'validation_fraction' must be in {limit}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise HandlerError(ErrorCode.BAD_ARGUMENTS, "'split_seed' must be an integer")
    return float(fraction), seed


HANDLERS: dict[str, Handler] = {
    "ping_request": handle_ping,
    "list_request": handle_list,
    "fa_request": handle_fa,
    "preproc_request": handle_preproc,
    "training_plan_status_request": handle_plan_status,
    "approval_request": handle_approval,
    "train_request": handle_train,
    "secagg_request": handle_secagg,
    "predict_request": handle_predict,
}
"""Handler for each request ``type`` tag."""

HEAVY_MESSAGE_TYPES: frozenset[str] = frozenset(
    {"train_request", "fa_request", "preproc_request", "predict_request"}
)
"""Request types that run in the heavy lane, so they never hold up pings and status requests."""
