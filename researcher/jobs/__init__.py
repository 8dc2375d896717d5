"""Federated jobs: one request each with its checks, experiments, secure aggregation.

- :mod:`~researcher.jobs.base`, :mod:`~researcher.jobs.analytics`,
  :mod:`~researcher.jobs.preprocessing`, :mod:`~researcher.jobs.training`,
  :mod:`~researcher.jobs.plans`: the jobs;
- :mod:`~researcher.jobs.experiment`: rounds of federated training, under a strategy
  (:mod:`~researcher.jobs.strategies`) and a client sampling (:mod:`~researcher.jobs.sampling`);
- :mod:`~researcher.jobs.secagg` and :mod:`~researcher.jobs.masked`: secure aggregation;
- :mod:`~researcher.jobs.payloads`: encrypted training payloads;
- :mod:`~researcher.jobs.monitor`: the callbacks watching the nodes' progress;
- :mod:`~researcher.jobs.aggregation` and :mod:`~researcher.jobs.statistics`: combining what
  the nodes answered.
"""

from researcher.jobs.aggregation import fedavg, weighted_metrics
from researcher.jobs.analytics import FARequestJob, FAResult
from researcher.jobs.base import Job
from researcher.jobs.experiment import Experiment, ExperimentResult, RoundRecord
from researcher.jobs.masked import masked_update, unflatten
from researcher.jobs.monitor import MonitorCallback, ProgressMonitor
from researcher.jobs.payloads import open_reply, seal_request
from researcher.jobs.plans import TrainingPlanApproveJob, TrainingPlanCheckJob
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
    "Experiment",
    "ExperimentResult",
    "FARequestJob",
    "FAResult",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedProx",
    "FedYogi",
    "Job",
    "MonitorCallback",
    "NodeUpdate",
    "PreprocRequestJob",
    "PreprocResult",
    "ProgressMonitor",
    "RoundRecord",
    "Sampling",
    "SamplingError",
    "Scaffold",
    "SecureAggregation",
    "Strategy",
    "TrainingJob",
    "TrainingPlanApproveJob",
    "TrainingPlanCheckJob",
    "TrainingResult",
    "availability",
    "combine_quantiles",
    "combine_statistics",
    "default_threshold",
    "fedavg",
    "make_strategy",
    "masked_update",
    "open_reply",
    "seal_request",
    "unflatten",
    "weighted_metrics",
]
