"""The researcher's async API: requests with policies, jobs, experiments."""

from researcher.aggregation import fedavg, weighted_metrics
from researcher.analytics import combine_statistics
from researcher.errors import (
    JobError,
    NodeErrorReply,
    NoReplyError,
    RequestError,
    RequestTimeoutError,
    SecureAggregationError,
)
from researcher.experiment import Experiment, ExperimentResult, RoundRecord
from researcher.fedjob import FedJob, JobResult
from researcher.jobs import (
    FARequestJob,
    FAResult,
    Job,
    PreprocRequestJob,
    PreprocResult,
    TrainingJob,
    TrainingPlanApproveJob,
    TrainingPlanCheckJob,
    TrainingResult,
)
from researcher.lifecycle import State, TransitionError
from researcher.policies import (
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
from researcher.presence import NodePresence, PresenceTable
from researcher.requests import (
    FederatedRequest,
    LateReply,
    MessagesByNode,
    NodeTiming,
    PolicyReport,
    Requests,
)
from researcher.scheduler import Scheduler
from researcher.secagg import SecureAggregation
from researcher.settings import ResearcherSettings
from researcher.spec import (
    AnalyticsTask,
    JobSpec,
    PlanApprovalTask,
    PlanCheckTask,
    PreprocessingTask,
    SpecError,
    TrainingTask,
)
from researcher.store import JobStore

__all__ = [
    "AnalyticsTask",
    "DiscardOnStall",
    "DiscardOnTimeout",
    "Experiment",
    "ExperimentResult",
    "FARequestJob",
    "FAResult",
    "FedJob",
    "FederatedRequest",
    "Job",
    "JobError",
    "JobResult",
    "JobSpec",
    "JobStore",
    "LateReply",
    "MessagesByNode",
    "NoReplyError",
    "NodeErrorReply",
    "NodePresence",
    "NodeState",
    "NodeTiming",
    "PlanApprovalTask",
    "PlanCheckTask",
    "Policy",
    "PolicyReport",
    "PreprocRequestJob",
    "PreprocResult",
    "PreprocessingTask",
    "PresenceTable",
    "RequestError",
    "RequestStatus",
    "RequestTimeoutError",
    "Requests",
    "ResearcherSettings",
    "RoundRecord",
    "Scheduler",
    "SecureAggregation",
    "SecureAggregationError",
    "SpecError",
    "State",
    "StopOnDisconnect",
    "StopOnError",
    "StopOnStall",
    "StopOnTimeout",
    "TrainingJob",
    "TrainingPlanApproveJob",
    "TrainingPlanCheckJob",
    "TrainingResult",
    "TrainingTask",
    "TransitionError",
    "Verdict",
    "combine_statistics",
    "fedavg",
    "weighted_metrics",
]
