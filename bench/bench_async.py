"""Wall-clock time to a target test accuracy: asynchronous FedBuff against synchronous FedAvg,
with one node five times slower than the others, in one run.

    python -m bench.bench_async [--nodes 5] [--target 0.95] [--delay 0.1] [--budget 60] \
        [--buffer-size 2] [--iid]

Both run the researcher's real code, :class:`researcher.jobs.experiment.Experiment` (FedAvg,
every node every round) and :class:`researcher.jobs.buffered.BufferedExperiment` (FedBuff),
over the in-memory transport against node agents. Only each node's training is simplified: it
runs the demo plan in-process on the node's shard of the breast-cancer data (non-IID unless
``--iid``, standardised with the pooled statistics, as :mod:`bench.bench_strategies`), then
sleeps ``delay`` seconds (5 times that on the slow node) to stand for a machine's speed. The global
model is scored on the held-out test set after every round or version; a figure is the wall
clock from the start to the first model at or above the target. The ratio is async / sync:
below 1, asynchronous training got there sooner.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import numpy as np

from bench import Row, row
from broker_net.logs import configure_logging
from broker_net.memory import MemoryBroker, MemoryTransport
from broker_net.messages import TrainReply, TrainRequest
from broker_net.topology import Topology
from node_agent.agent import NodeAgent
from node_agent.context import NodeContext
from node_agent.handlers import HANDLERS
from node_agent.settings import NodeSettings
from researcher.jobs.buffered import BufferedExperiment
from researcher.jobs.buffered_records import StopWhen
from researcher.jobs.experiment import Experiment
from researcher.jobs.fedbuff import FedBuffSettings
from researcher.requests.policies import DiscardOnTimeout
from researcher.requests.router import Requests
from simulation.demo_plan import BreastCancerPlan
from simulation.sample_data import breast_cancer, shard

TRAINING_ARGS = {"epochs": 1, "learning_rate": 0.01, "batch_size": 32}
Shards = dict[str, tuple[np.ndarray, np.ndarray]]


def _data(nodes: int, non_iid: bool) -> tuple[Shards, Callable[[Mapping[str, Any]], float]]:
    data = breast_cancer()
    mean, std = data.x_train.mean(axis=0), data.x_train.std(axis=0)
    parts = [shard(data, i, nodes, non_iid=non_iid) for i in range(nodes)]
    shards = {f"node-{i}": ((x - mean) / std, y) for i, (x, y) in enumerate(parts)}
    x_test = (data.x_test - mean) / std

    def accuracy(params: Mapping[str, Any]) -> float:
        model = BreastCancerPlan()
        model.init_model({"n_features": x_test.shape[1]})
        model.set_params(dict(params))
        return float(model.evaluate(x_test, data.y_test)["accuracy"])

    return shards, accuracy


def _trainer(shards: Shards, delays: dict[str, float]) -> Callable[..., Any]:
    async def handle(request: TrainRequest, context: NodeContext) -> TrainReply:
        x, y = shards[context.node_id]
        model = BreastCancerPlan()
        model.init_model(request.model_args)
        model.set_params(request.params)
        metrics = model.train(x, y, {**request.training_args, "seed": request.round})
        await anyio.sleep(delays[context.node_id])
        return TrainReply(
            request_id=request.request_id, researcher_id=request.researcher_id,
            node_id=context.node_id, experiment_id=request.experiment_id, round=request.round,
            success=True, params=model.get_params(), sample_size=len(y), metrics=metrics,
            model_version=request.model_version,
        )  # fmt: skip

    return handle


@asynccontextmanager
async def _federation(
    root: Path, shards: Shards, delays: dict[str, float]
) -> AsyncIterator[Requests]:
    broker, topology = MemoryBroker(), Topology("bench-async")
    handler = _trainer(shards, delays)
    async with AsyncExitStack() as stack:
        for node in shards:
            settings = NodeSettings(
                node_id=node, data_dir=root / node, namespace=topology.namespace,
                heartbeat_interval=0.2, security=False,
            )  # fmt: skip
            transport = await stack.enter_async_context(MemoryTransport(broker))
            handlers = dict(HANDLERS, train_request=handler)
            await stack.enter_async_context(NodeAgent(settings, transport, handlers=handlers))
        transport = await stack.enter_async_context(MemoryTransport(broker))
        requests = await stack.enter_async_context(
            Requests(transport, "bench", topology=topology, presence_check_interval=0.05)
        )
        await requests.wait_for_nodes(list(shards), timeout=10)
        yield requests


async def _sync(requests: Requests, shards: Shards, accuracy: Any, target: float,
                budget: float) -> tuple[float | None, int, float]:  # fmt: skip
    experiment = Experiment(
        requests, plan=BreastCancerPlan, datasets=dict.fromkeys(shards, "d"), rounds=10_000,
        training_args=TRAINING_ARGS, model_args={"n_features": 30},
        policies=[DiscardOnTimeout(60)], min_replies=len(shards),
    )  # fmt: skip
    started, number, score = time.monotonic(), 0, 0.0
    while time.monotonic() - started < budget:
        number += 1
        await experiment.run_round(number)
        score = accuracy(experiment.params)
        if score >= target:
            return time.monotonic() - started, number, score
    return None, number, score


async def _async(requests: Requests, shards: Shards, accuracy: Any, target: float,
                 budget: float, buffer_size: int) -> tuple[float | None, int, float]:  # fmt: skip
    experiment = BufferedExperiment(
        requests, plan=BreastCancerPlan, datasets=dict.fromkeys(shards, "d"),
        training_args=TRAINING_ARGS, model_args={"n_features": 30},
        settings=FedBuffSettings(buffer_size=buffer_size, max_staleness=20),
        stop=StopWhen(time_budget=budget, target_metric="test_accuracy", target_value=target),
        evaluate=lambda params: {"test_accuracy": accuracy(params)},
    )  # fmt: skip
    result = await experiment.run()
    reached = [v for v in result.versions if v.metrics["test_accuracy"] >= target]
    score = result.versions[-1].metrics["test_accuracy"] if result.versions else 0.0
    if not reached:
        return None, result.version, score
    return reached[0].elapsed, reached[0].version, reached[0].metrics["test_accuracy"]


async def measure(
    *, nodes: int = 5, target: float = 0.95, delay: float = 0.1, budget: float = 60.0,
    buffer_size: int = 2, non_iid: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """Seconds (and rounds or versions) to ``target`` for FedAvg and FedBuff, one node slow."""
    shards, accuracy = _data(nodes, non_iid)
    delays = {node: delay for node in shards}
    delays["node-0"] = 5 * delay
    with tempfile.TemporaryDirectory() as root:
        async with _federation(Path(root) / "sync", shards, delays) as requests:
            sync = await _sync(requests, shards, accuracy, target, budget)
        async with _federation(Path(root) / "async", shards, delays) as requests:
            fedbuff = await _async(requests, shards, accuracy, target, budget, buffer_size)
    return {"sync": sync, "async": fedbuff, "nodes": nodes, "target": target, "delay": delay}


def run() -> list[Row]:
    """The figure for :mod:`bench.run`: seconds to 0.95 test accuracy, async over sync."""
    configure_logging("ERROR")
    found = anyio.run(lambda: measure())
    (sync, _, _), (fedbuff, _, _) = found["sync"], found["async"]
    if sync is None or fedbuff is None:
        return []
    name = (
        f"seconds to {found['target']} accuracy, FedBuff vs FedAvg, "
        f"1 of {found['nodes']} nodes 5x slower"
    )
    return [row(name, fedbuff, sync, "s", None)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--delay", type=float, default=0.1, help="a fast node's seconds")
    parser.add_argument("--budget", type=float, default=60.0, help="seconds per run at most")
    parser.add_argument("--buffer-size", type=int, default=2)
    parser.add_argument("--iid", action="store_true", help="IID shards instead of non-IID")
    args = parser.parse_args(argv)
    configure_logging("ERROR")  # the nodes' answers to the requests cancelled at the end
    found = anyio.run(
        lambda: measure(
            nodes=args.nodes,
            target=args.target,
            delay=args.delay,
            budget=args.budget,
            buffer_size=args.buffer_size,
            non_iid=not args.iid,
        )
    )
    shards = "IID" if args.iid else "non-IID"
    print(
        f"{args.nodes} {shards} nodes, one {5 * args.delay:g} s per training, the others "
        f"{args.delay:g} s; target test accuracy {args.target}; K = {args.buffer_size}\n"
    )
    print("| training | seconds to target | rounds / versions | accuracy then |")
    print("|---|---|---|---|")
    for label, key in (("synchronous FedAvg", "sync"), ("asynchronous FedBuff", "async")):
        seconds, steps, score = found[key]
        shown = f"{seconds:.2f}" if seconds is not None else f"- (>{args.budget:g})"
        print(f"| {label} | {shown} | {steps} | {score:.3f} |")
    (sync, _, _), (fedbuff, _, _) = found["sync"], found["async"]
    ratio = f"{fedbuff / sync:.2f}" if sync and fedbuff else "-"
    print(f"\nratio async / sync (wall clock to {args.target}): {ratio}")


if __name__ == "__main__":
    main()
