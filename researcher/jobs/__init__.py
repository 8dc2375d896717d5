"""Federated jobs: one request each with its checks, experiments, secure aggregation.

- :mod:`~researcher.jobs.base`, :mod:`~researcher.jobs.analytics`,
  :mod:`~researcher.jobs.preprocessing`, :mod:`~researcher.jobs.training`,
  :mod:`~researcher.jobs.plans`: the jobs;
- :mod:`~researcher.jobs.experiment`: rounds of federated training, under a strategy
  (:mod:`~researcher.jobs.strategies`) and a client sampling (:mod:`~researcher.jobs.sampling`),
  evaluated with a best model (:mod:`~researcher.jobs.evaluation`);
- :mod:`~researcher.jobs.buffered`: asynchronous training (FedBuff,
  :mod:`~researcher.jobs.fedbuff`), its records (:mod:`~researcher.jobs.buffered_records`)
  and its pool of nodes (:mod:`~researcher.jobs.node_pool`);
- :mod:`~researcher.jobs.prediction`: a trained model run on the nodes' data;
- :mod:`~researcher.jobs.secagg` and :mod:`~researcher.jobs.masked`: secure aggregation;
- :mod:`~researcher.jobs.payloads`: encrypted training payloads;
- :mod:`~researcher.jobs.monitor`: the callbacks watching the nodes' progress;
- :mod:`~researcher.jobs.aggregation` and :mod:`~researcher.jobs.statistics`: combining what
  the nodes answered.
"""

from researcher.jobs.aggregation import fedavg, weighted_metrics
from researcher.jobs.analytics import FARequestJob, FAResult
from researcher.jobs.base import Job
from researcher.jobs.buffered import BufferedExperiment
from researcher.jobs.buffered_records import (
    SECAGG_REFUSED,
    BufferedResult,
    StopWhen,
    UpdateRecord,
    UpdateStatus,
    VersionRecord,
)
from researcher.jobs.evaluation import (
    BestModel,
    Evaluation,
    EvaluationRecord,
    best_round,
    metric_goal,
)
from researcher.jobs.experiment import Experiment, ExperimentResult, RoundRecord
from researcher.jobs.fedbuff import (
    STALENESS_WEIGHTS,
    Arrival,
    BufferedUpdate,
    FedBuffServer,
    FedBuffSettings,
    PublishedVersion,
    buffer_metrics,
    staleness_weight,
)
from researcher.jobs.masked import masked_update, unflatten
from researcher.jobs.monitor import MonitorCallback, ProgressMonitor
from researcher.jobs.node_pool import NodePool
from researcher.jobs.payloads import open_reply, seal_request
from researcher.jobs.plans import TrainingPlanApproveJob, TrainingPlanCheckJob
from researcher.jobs.prediction import PredictionJob, PredictionResult
from researcher.jobs.preprocessing import PreprocRequestJob, PreprocResult
from researcher.jobs.sampling import Sampling, SamplingError, availability
from researcher.jobs.secagg import SecureAggregation, default_threshold
from researcher.jobs.statistics import combine_quantiles, combine_statistics
from researcher.jobs.strategies import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedProx,
    FedYogi,
    NodeUpdate,
    Scaffold,
    Strategy,
    make_strategy,
)
from researcher.jobs.training import TrainingJob, TrainingResult

__all__ = [
    "SECAGG_REFUSED",
    "STALENESS_WEIGHTS",
    "Arrival",
    "BestModel",
    "BufferedExperiment",
    "BufferedResult",
    "BufferedUpdate",
    "Evaluation",
    "EvaluationRecord",
    "Experiment",
    "ExperimentResult",
    "FARequestJob",
    "FAResult",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedBuffServer",
    "FedBuffSettings",
    "FedProx",
    "FedYogi",
    "Job",
    "MonitorCallback",
    "NodePool",
    "NodeUpdate",
    "PredictionJob",
    "PredictionResult",
    "PreprocRequestJob",
    "PreprocResult",
    "ProgressMonitor",
    "PublishedVersion",
    "RoundRecord",
    "Sampling",
    "SamplingError",
    "Scaffold",
    "SecureAggregation",
    "StopWhen",
    "Strategy",
    "TrainingJob",
    "TrainingPlanApproveJob",
    "TrainingPlanCheckJob",
    "TrainingResult",
    "UpdateRecord",
    "UpdateStatus",
    "VersionRecord",
    "availability",
    "best_round",
    "buffer_metrics",
    "combine_quantiles",
    "combine_statistics",
    "default_threshold",
    "fedavg",
    "make_strategy",
    "masked_update",
    "metric_goal",
    "open_reply",
    "seal_request",
    "staleness_weight",
    "unflatten",
    "weighted_metrics",
]
