"""The training plan the demo sends to the nodes: logistic regression with a little weight decay.

Its source travels to every node, where the operator reviews and approves it before it runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from training_plans.logistic import LogisticRegressionPlan


class BreastCancerPlan(LogisticRegressionPlan):
    """Logistic regression on the 30 breast-cancer features, with L2 weight decay."""

    def train(
        self,
        x: npt.NDArray[np.float64],
        y: npt.NDArray[np.float64],
        training_args: Mapping[str, Any],
    ) -> dict[str, float]:
        """Train with weight decay 0.03 unless the researcher asks for another, reporting the
        step and its batch's loss as progress (see ``LogisticRegressionPlan.train``)."""
        return super().train(x, y, {"l2": 0.03, **training_args})
