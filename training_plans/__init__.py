"""Training plans: the model code a researcher sends for nodes to run on their data.

Everything a plan author or a party needs is importable from here:
``from training_plans import LogisticRegressionPlan, TrainingPlan, plan_source``.
:mod:`training_plans.plan` holds the :class:`TrainingPlan` base and :func:`plan_source`;
:mod:`training_plans.logistic` the ready :class:`LogisticRegressionPlan`. The package needs
only numpy and the standard library, so that a node can run a plan's source in a child process.
"""

from training_plans.logistic import LogisticRegressionPlan
from training_plans.plan import ALLOWED_IMPORT_ROOTS, Params, TrainingPlan, plan_source

__all__ = [
    "ALLOWED_IMPORT_ROOTS",
    "LogisticRegressionPlan",
    "Params",
    "TrainingPlan",
    "plan_source",
]
