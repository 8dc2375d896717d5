"""The researcher's async API: requests with policies, jobs, experiments."""

from researcher.aggregation import fedavg, weighted_metrics
from researcher.analytics import combine_statistics
from researcher.errors import (
    JobError,
    NodeErrorReply,
    NoReplyError,
    RequestError,
    RequestTimeoutError,
)
from researcher.experiment import Experiment, ExperimentResult, RoundRecord
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
from researcher.policies import (
    DiscardOnTimeout,
    NodeState,
    Policy,
    RequestStatus,
    StopOnDisconnect,
    StopOnError,
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
from researcher.settings import ResearcherSettings

__all__ = [
    "DiscardOnTimeout",
    "Experiment",
    "ExperimentResult",
    "FARequestJob",
    "FAResult",
    "FederatedRequest",
    "Job",
    "JobError",
    "LateReply",
    "MessagesByNode",
    "NoReplyError",
    "NodeErrorReply",
    "NodePresence",
    "NodeState",
    "NodeTiming",
    "Policy",
    "PolicyReport",
    "PreprocRequestJob",
    "PreprocResult",
    "PresenceTable",
    "RequestError",
    "RequestStatus",
    "RequestTimeoutError",
    "Requests",
    "ResearcherSettings",
    "RoundRecord",
    "StopOnDisconnect",
    "StopOnError",
    "StopOnTimeout",
    "TrainingJob",
    "TrainingPlanApproveJob",
    "TrainingPlanCheckJob",
    "TrainingResult",
    "Verdict",
    "combine_statistics",
    "fedavg",
    "weighted_metrics",
]
