"""A training plan for the progress tests: it trains for a given time, reporting all along."""

from __future__ import annotations

from training_plans.logistic import LogisticRegressionPlan


class SlowPlan(LogisticRegressionPlan):
    """Trains for ``training_args["seconds"]`` seconds, reporting every 20 ms, then one
    logistic-regression step over the data."""

    def train(self, x, y, training_args):  # type: ignore[no-untyped-def]
        import time

        end = time.monotonic() + training_args["seconds"]
        step = 0
        while time.monotonic() < end:
            step += 1
            self.report_progress(iteration=step, loss=1.0 / step)
            time.sleep(0.02)
        return super().train(x, y, {})
