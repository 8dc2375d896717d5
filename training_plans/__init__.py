"""Training plans: the model code a researcher sends for nodes to run on their data.

Everything a plan author or a party needs is importable from here:
``from training_plans import LogisticRegressionPlan, TrainingPlan, plan_source``.
:mod:`training_plans.plan` holds the :class:`TrainingPlan` base and :func:`plan_source`;
:mod:`training_plans.logistic`, :mod:`training_plans.mlp` and :mod:`training_plans.linear` the
ready :class:`LogisticRegressionPlan`, :class:`MLPPlan` and :class:`SklearnLinearPlan`;
:mod:`training_plans.corrections` FedProx's and SCAFFOLD's local corrections;
:mod:`training_plans.progress` where a plan's progress reports go. Importing the
package needs only numpy and the standard library (the scikit-learn plan imports scikit-learn
when it builds its model), so that a node can run a plan's source in a child process.
"""

from training_plans.corrections import LocalCorrection
from training_plans.linear import SklearnLinearPlan
from training_plans.logistic import LogisticRegressionPlan
from training_plans.mlp import MLPPlan
from training_plans.plan import ALLOWED_IMPORT_ROOTS, Params, TrainingPlan, plan_source
from training_plans.progress import (
    ProgressSink,
    progress_due,
    progress_values,
    report_progress,
    set_progress_sink,
)

__all__ = [
    "ALLOWED_IMPORT_ROOTS",
    "LocalCorrection",
    "LogisticRegressionPlan",
    "MLPPlan",
    "Params",
    "ProgressSink",
    "SklearnLinearPlan",
    "TrainingPlan",
    "plan_source",
    "progress_due",
    "progress_values",
    "report_progress",
    "set_progress_sink",
]
