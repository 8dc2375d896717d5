"""What a node adds to a training round besides the plan's own computing, fresh vs warm worker.

The demo's plan (``researcher.demo_plan.BreastCancerPlan``, logistic regression) trains on a
node's shard of the demo data (``broker_net.sample_data``) through the node's train handler, as
a request from a researcher would, with the node's default sandbox. A round's overhead is the
handler's wall time minus the plan's ``train`` time measured in its process
(``timing["rtime_training"]``): starting and confining a process, importing, loading the plan,
moving the job and the result, evaluation and bookkeeping.

- cold: ``plan_workers=0``, a fresh sandboxed process every round (as before warm workers);
- warm: the rounds of one experiment on its warm worker; the first round, which starts the
  worker, is reported apart.

Two rows: warm against cold (reported), and warm against the budget of 0.15 s a round (target
at most 1x).

Usage: ``python -m bench.bench_plan_runner`` (also part of ``python -m bench.run``);
``BENCH_QUICK=1`` runs fewer rounds.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from rich.console import Console

from bench import Row, row
from broker_net.messages import TrainReply, TrainRequest
from node_agent.context import NodeContext
from node_agent.handlers import HANDLERS
from node_agent.settings import NodeSettings
from simulation.demo_plan import BreastCancerPlan
from simulation.sample_data import write_shard_csv
from training_plans.plan import plan_source

BUDGET = 0.15
"""Seconds a warm round may add to the plan's own computing."""


def _rounds() -> tuple[int, int]:
    quick = bool(os.environ.get("BENCH_QUICK"))
    return (3, 10) if quick else (6, 30)


def run() -> list[Row]:
    """Measure the cold and warm overhead of a round."""
    return anyio.run(_measure)


async def _measure() -> list[Row]:
    cold_rounds, warm_rounds = _rounds()
    with tempfile.TemporaryDirectory(prefix="bench-plan-runner-") as folder:
        cold, _ = await _overheads(Path(folder) / "cold", cold_rounds, workers=0)
        warm, first = await _overheads(Path(folder) / "warm", warm_rounds + 1, workers=2)
    cold_s, warm_s = statistics.median(cold), statistics.median(warm[1:])
    return [
        row(
            "training round overhead, warm worker vs fresh process (demo plan)",
            warm_s,
            cold_s,
            "s",
            None,
        ),
        row(
            f"training round overhead, warm worker vs a budget of {BUDGET:g} s",
            warm_s,
            BUDGET,
            "s",
            1.0,
        ),
        row("first round of a warm worker (starts it) vs fresh process", first, cold_s, "s", None),
    ]


async def _overheads(data_dir: Path, rounds: int, *, workers: int) -> tuple[list[float], float]:
    shard = data_dir / "shard.csv"
    os.mkdir(data_dir, mode=0o700)  # as an operator keeps it: plans may not read it
    write_shard_csv(shard, 0, 3)
    settings = NodeSettings(node_id="bench", data_dir=data_dir, plan_workers=workers)
    context = NodeContext.open(settings)
    try:
        source = plan_source(BreastCancerPlan)
        context.plans.approve(context.plans.register(source).plan_id)
        dataset_id = context.datasets.add(shard, target="target").dataset_id
        overheads: list[float] = []
        params: dict[str, Any] = {}
        for number in range(rounds):
            request = TrainRequest(
                researcher_id="alice", experiment_id="bench", round=number,
                training_plan=source, training_plan_class="BreastCancerPlan",
                dataset_id=dataset_id, params=params,
                training_args={"epochs": 1, "batch_size": 32, "learning_rate": 0.01},
            )  # fmt: skip
            started = time.perf_counter()
            reply: TrainReply = await HANDLERS["train_request"](request, context)
            wall = time.perf_counter() - started
            overheads.append(wall - reply.timing["rtime_training"])
            params = dict(reply.params or {})
        return overheads, overheads[0]
    finally:
        context.close()


if __name__ == "__main__":
    figures = run()
    console = Console()
    for figure in figures:
        target = "" if figure["target"] is None else f" (target <= {figure['target']:.2f}x)"
        console.print(
            f"{figure['name']}: {figure['ours']:.3f} {figure['unit']} vs "
            f"{figure['baseline']:.3f} {figure['unit']}, ratio {figure['ratio']:.3f}x{target}"
        )
