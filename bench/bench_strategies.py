"""Rounds to a target accuracy per strategy, against FedAvg, on a non-IID split of the demo data.

    python -m bench.bench_strategies [--nodes 5] [--target 0.95] [--cap 200]

An in-process simulation, for speed: each node holds a non-IID shard of scikit-learn's
breast-cancer data (:func:`simulation.sample_data.shard` with ``non_iid=True``: mostly one
class per node), standardised with the pooled training statistics (as the demo's federated
standardisation gives), and trains the demo plan locally; the strategy aggregates the nodes'
parameters exactly as :class:`researcher.jobs.experiment.Experiment` does. Every round the
global model is scored on the held-out test set; a strategy's figure is the first round at
which it reaches the target accuracy (``-`` when it does not within the cap). The server
optimizers run with each server learning rate of a small grid (the paper tunes η per task);
the table shows every one, and the ratios compare the best of each with FedAvg.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from researcher.jobs.strategies import FedAdagrad, FedAdam, FedAvg, FedYogi, NodeUpdate, Strategy
from simulation.demo_plan import BreastCancerPlan
from simulation.sample_data import breast_cancer, shard

TRAINING_ARGS = {"epochs": 1, "learning_rate": 0.01, "batch_size": 32}
LEARNING_RATES = (0.01, 0.03, 0.1)


def rounds_to_target(
    make: Callable[[], Strategy], *, nodes: int, target: float, cap: int
) -> tuple[int | None, float]:
    """The first round whose global model reaches ``target`` test accuracy (None if none
    within ``cap``), and the accuracy after the last round run."""
    data = breast_cancer()
    mean, std = data.x_train.mean(axis=0), data.x_train.std(axis=0)
    shards = [shard(data, index, nodes, non_iid=True) for index in range(nodes)]
    shards = [((x - mean) / std, y) for x, y in shards]
    x_test = (data.x_test - mean) / std
    model = BreastCancerPlan()
    model.init_model({"n_features": x_test.shape[1]})
    params = dict(model.get_params())
    strategy = make()
    accuracy = 0.0
    for number in range(1, cap + 1):
        updates = {}
        for index, (x, y) in enumerate(shards):
            local = BreastCancerPlan()
            local.init_model({"n_features": x.shape[1]})
            local.set_params(params)
            args = {**TRAINING_ARGS, "seed": number}
            metrics = local.train(x, y, args)
            updates[f"node-{index}"] = NodeUpdate(local.get_params(), len(y), metrics)
        params = strategy.aggregate(number, params, updates)
        model.set_params(params)
        accuracy = model.evaluate(x_test, data.y_test)["accuracy"]
        if accuracy >= target:
            return number, accuracy
    return None, accuracy


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--cap", type=int, default=200)
    args = parser.parse_args(argv)
    runs: list[tuple[str, str, Callable[[], Strategy]]] = [("fedavg", "-", FedAvg)]
    for cls in (FedAdagrad, FedAdam, FedYogi):
        for eta in LEARNING_RATES:
            runs.append((cls.name, f"{eta:g}", lambda c=cls, e=eta: c(server_learning_rate=e)))
    print(
        f"{args.nodes} non-IID nodes, local {TRAINING_ARGS}, target test accuracy "
        f"{args.target}, cap {args.cap} rounds\n"
    )
    print(f"| strategy | η | rounds to {args.target} | final accuracy |")
    print("|---|---|---|---|")
    best: dict[str, int | None] = {}
    for name, eta, make in runs:
        rounds, accuracy = rounds_to_target(
            make, nodes=args.nodes, target=args.target, cap=args.cap
        )
        shown = str(rounds) if rounds is not None else f"- (>{args.cap})"
        print(f"| {name} | {eta} | {shown} | {accuracy:.3f} |")
        if rounds is not None and (best.get(name) is None or rounds < (best[name] or 0)):
            best[name] = rounds
        best.setdefault(name, None)
    baseline = best["fedavg"]
    print("\n| strategy | best rounds | ratio to FedAvg |")
    print("|---|---|---|")
    for name, rounds in best.items():
        ratio = f"{rounds / baseline:.2f}" if rounds is not None and baseline else "-"
        print(f"| {name} | {rounds if rounds is not None else '-'} | {ratio} |")


if __name__ == "__main__":
    main()
