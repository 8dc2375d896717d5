"""The researcher's async API: requests with policies, jobs, experiments."""

from researcher.errors import (
    JobError,
    NodeErrorReply,
    NodeErrors,
    NodesMissingError,
    NoReplyError,
    RequestError,
    RequestTimeoutError,
    SecureAggregationError,
)
from researcher.jobs.aggregation import fedavg, weighted_metrics
from researcher.jobs.analytics import FARequestJob, FAResult
from researcher.jobs.base import Job
from researcher.jobs.buffered import BufferedExperiment
from researcher.jobs.buffered_records import StopWhen
from researcher.jobs.evaluation import BestModel, Evaluation, EvaluationRecord
from researcher.jobs.experiment import Experiment, ExperimentResult, RoundRecord
from researcher.jobs.fedbuff import FedBuffSettings
from researcher.jobs.plans import TrainingPlanApproveJob, TrainingPlanCheckJob
from researcher.jobs.prediction import PredictionJob, PredictionResult
from researcher.jobs.preprocessing import PreprocRequestJob, PreprocResult
from researcher.jobs.sampling import Sampling, SamplingError
from researcher.jobs.secagg import SecureAggregation
from researcher.jobs.statistics import combine_statistics
from researcher.jobs.strategies import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedProx,
    FedYogi,
    Scaffold,
    Strategy,
)
from researcher.jobs.training import TrainingJob, TrainingResult
from researcher.orchestration.fedjob import FedJob, JobResult
from researcher.orchestration.lifecycle import State, TransitionError
from researcher.orchestration.model_specs import EvaluationSpec, ModelRef
from researcher.orchestration.scheduler import Scheduler
from researcher.orchestration.spec import JobSpec
from researcher.orchestration.store.job_store import JobStore
from researcher.orchestration.task_specs import (
    AnalyticsTask,
    AsyncTrainingTask,
    PlanApprovalTask,
    PlanCheckTask,
    PredictionTask,
    PreprocessingTask,
    SpecError,
    TrainingTask,
)
from researcher.orchestration.trained_models import TrainedModel, load_model
from researcher.requests.federated import FederatedRequest, MessagesByNode, PolicyReport
from researcher.requests.hooks import RequestHooks
from researcher.requests.ledger import NodeTiming
from researcher.requests.policies import (
    DiscardOnStall,
    DiscardOnTimeout,
    NodeState,
    Policy,
    RequestStatus,
    StopOnDisconnect,
    StopOnError,
    StopOnStall,
    StopOnTimeout,
    Verdict,
)
from researcher.requests.presence import NodePresence, PresenceTable
from researcher.requests.progress import ProgressEvent
from researcher.requests.reply_log import LateReply
from researcher.requests.router import Requests
from researcher.settings import ResearcherSettings

__all__ = [
    "AnalyticsTask",
    "AsyncTrainingTask",
    "BestModel",
    "BufferedExperiment",
    "DiscardOnStall",
    "DiscardOnTimeout",
    "Evaluation",
    "EvaluationRecord",
    "EvaluationSpec",
    "Experiment",
    "ExperimentResult",
    "FARequestJob",
    "FAResult",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedBuffSettings",
    "FedJob",
    "FedProx",
    "FedYogi",
    "FederatedRequest",
    "Job",
    "JobError",
    "JobResult",
    "JobSpec",
    "JobStore",
    "LateReply",
    "MessagesByNode",
    "ModelRef",
    "NoReplyError",
    "NodeErrorReply",
    "NodeErrors",
    "NodePresence",
    "NodeState",
    "NodeTiming",
    "NodesMissingError",
    "PlanApprovalTask",
    "PlanCheckTask",
    "Policy",
    "PolicyReport",
    "PredictionJob",
    "PredictionResult",
    "PredictionTask",
    "PreprocRequestJob",
    "PreprocResult",
    "PreprocessingTask",
    "PresenceTable",
    "ProgressEvent",
    "RequestError",
    "RequestHooks",
    "RequestStatus",
    "RequestTimeoutError",
    "Requests",
    "ResearcherSettings",
    "RoundRecord",
    "Sampling",
    "SamplingError",
    "Scaffold",
    "Scheduler",
    "SecureAggregation",
    "SecureAggregationError",
    "SpecError",
    "State",
    "StopOnDisconnect",
    "StopOnError",
    "StopOnStall",
    "StopOnTimeout",
    "StopWhen",
    "Strategy",
    "TrainedModel",
    "TrainingJob",
    "TrainingPlanApproveJob",
    "TrainingPlanCheckJob",
    "TrainingResult",
    "TrainingTask",
    "TransitionError",
    "Verdict",
    "combine_statistics",
    "fedavg",
    "load_model",
    "weighted_metrics",
]
