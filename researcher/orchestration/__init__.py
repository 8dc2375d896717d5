"""Orchestration: job specs, the job store, the scheduler running them, and their outputs.

- :mod:`~researcher.orchestration.fedjob`: :class:`FedJob`, a job defined in Python;
- :mod:`~researcher.orchestration.spec`, :mod:`~researcher.orchestration.task_specs` and
  :mod:`~researcher.orchestration.model_specs`: the job spec, its tasks, evaluations and model
  references;
- :mod:`~researcher.orchestration.scheduler`, :mod:`~researcher.orchestration.startup`,
  :mod:`~researcher.orchestration.dag` and :mod:`~researcher.orchestration.tasks` (with
  :mod:`~researcher.orchestration.training_task` and
  :mod:`~researcher.orchestration.prediction_task`): running stored jobs;
- :mod:`~researcher.orchestration.trained_models`: trained models in the store, by reference;
- :mod:`~researcher.orchestration.lifecycle`: the states of jobs and tasks;
- :mod:`~researcher.orchestration.store`: where jobs are kept;
- :mod:`~researcher.orchestration.outputs`: a job's outputs as plain data.
"""

from researcher.orchestration.async_spec import FedBuffSpec
from researcher.orchestration.async_training import run_async_training
from researcher.orchestration.dag import fill_inputs
from researcher.orchestration.fedjob import DEMO_DATASET_TAG, FedJob, JobResult
from researcher.orchestration.lifecycle import State, TransitionError, check_transition
from researcher.orchestration.model_specs import EvaluationSpec, ModelRef
from researcher.orchestration.outputs import OutputError
from researcher.orchestration.scheduler import Scheduler, cancel_unfinished, stop_job
from researcher.orchestration.spec import (
    DatasetSelector,
    Inheritance,
    JobConf,
    JobSpec,
    PlanSpec,
    SimulatedDataset,
)
from researcher.orchestration.startup import JobStartError
from researcher.orchestration.store.job_store import JobStore
from researcher.orchestration.task_context import Approver, TaskContext, TaskError
from researcher.orchestration.task_specs import (
    ALL_NODES,
    AnalyticsTask,
    AsyncTrainingTask,
    OutputRef,
    PlanApprovalTask,
    PlanCheckTask,
    PredictionTask,
    PreprocessingTask,
    SpecError,
    TaskSpec,
    TrainingTask,
)
from researcher.orchestration.tasks import run_task
from researcher.orchestration.trained_models import (
    ModelRefError,
    TrainedModel,
    check_model_refs,
    load_model,
)

__all__ = [
    "ALL_NODES",
    "DEMO_DATASET_TAG",
    "AnalyticsTask",
    "Approver",
    "AsyncTrainingTask",
    "DatasetSelector",
    "EvaluationSpec",
    "FedBuffSpec",
    "FedJob",
    "Inheritance",
    "JobConf",
    "JobResult",
    "JobSpec",
    "JobStartError",
    "JobStore",
    "ModelRef",
    "ModelRefError",
    "OutputError",
    "OutputRef",
    "PlanApprovalTask",
    "PlanCheckTask",
    "PlanSpec",
    "PredictionTask",
    "PreprocessingTask",
    "Scheduler",
    "SimulatedDataset",
    "SpecError",
    "State",
    "TaskContext",
    "TaskError",
    "TaskSpec",
    "TrainedModel",
    "TrainingTask",
    "TransitionError",
    "cancel_unfinished",
    "check_model_refs",
    "check_transition",
    "fill_inputs",
    "load_model",
    "run_async_training",
    "run_task",
    "stop_job",
]
