"""Your first federation, from your own async code: submit a training plan, wait until each
node's operator approves it, standardise every node's data with the pooled statistics, run
FedAvg rounds, and test the model.

Run it against node agents that hold the demo data and trust this researcher, with the
researcher's settings in the environment (``BROKER_NET_RESEARCHER_*``) and the node ids as
arguments (README.md, "Your first federation", gives every command)::

    python docs/examples/federated_run.py hospital-a hospital-b hospital-c
"""

from __future__ import annotations

import sys

import anyio
import numpy as np

from broker_net import AmqpTransport, ListRequest, PreprocStep, PreprocType, TrainingPlanStatus
from researcher import (
    DiscardOnTimeout,
    Experiment,
    FARequestJob,
    JobError,
    PreprocRequestJob,
    Requests,
    ResearcherSettings,
    StopOnError,
    TrainingPlanApproveJob,
    TrainingPlanCheckJob,
)
from simulation import BreastCancerPlan, breast_cancer
from training_plans import plan_source

EXPERIMENT = "first-federation"
TARGET = "target"
APPROVAL_WAIT = 600.0  # seconds the operators have to review the plan


async def main(nodes: list[str]) -> None:
    settings = ResearcherSettings()  # BROKER_NET_RESEARCHER_* environment variables
    async with (
        AmqpTransport(settings.amqp_url) as transport,
        Requests(
            transport,
            settings.researcher_id,
            topology=settings.topology,
            security=settings.load_security(),
        ) as requests,
    ):
        await requests.wait_for_nodes(nodes, timeout=60)

        # Which dataset each node holds (metadata only).
        listing = await requests.request(
            ListRequest(researcher_id=settings.researcher_id, tags=["breast-cancer"]), nodes,
            [DiscardOnTimeout(10)],
        )  # fmt: skip
        datasets = {node: reply.datasets[0].dataset_id for node, reply in listing.replies().items()}

        # 1. The plan travels as source text; a node runs it only once its operator approved it.
        source = plan_source(BreastCancerPlan)
        await submit_and_wait_for_approval(requests, source, nodes)

        # 2. Exact pooled statistics, then every node standardises its data with them.
        stats = await FARequestJob(
            requests, experiment_id=EXPERIMENT, fa_id="stats", datasets=datasets,
            stats=["count", "mean", "std"], policies=[StopOnError(), DiscardOnTimeout(60)],
        ).execute()  # fmt: skip
        columns = stats.statistics["columns"]
        features = [column for column in columns if column != TARGET]
        mean = {column: float(columns[column]["mean"]) for column in features}
        std = {column: float(columns[column]["std"]) for column in features}
        fitted = await PreprocRequestJob(
            requests, experiment_id=EXPERIMENT, preproc_id="scale", datasets=datasets,
            preproc_type=PreprocType.STANDARDIZE, preproc_step=PreprocStep.FIT,
            preproc_args={"mean": mean, "std": std},
        ).execute()  # fmt: skip
        scaled = await PreprocRequestJob(
            requests, experiment_id=EXPERIMENT, preproc_id="scale", datasets=datasets,
            preproc_type=PreprocType.STANDARDIZE, preproc_step=PreprocStep.APPLY,
            state_ids=fitted.state_ids,
        ).execute()  # fmt: skip
        print(f"standardised {len(features)} features on {len(scaled.state_ids)} nodes")

        # 3. FedAvg rounds on the standardised data.
        experiment = Experiment(
            requests, plan=BreastCancerPlan, datasets=datasets, rounds=10,
            training_args={"epochs": 2, "batch_size": 16, "learning_rate": 0.1, "seed": 1},
            model_args={"n_features": len(features)}, state_ids=dict(scaled.state_ids),
            policies=[StopOnError(), DiscardOnTimeout(120)], experiment_id=EXPERIMENT,
        )  # fmt: skip
        result = await experiment.run(
            lambda record: print(
                f"round {record.round}: validation accuracy "
                f"{record.aggregated_metrics.get('accuracy', float('nan')):.3f}"
            )
        )

        # 4. Test the federated model on the demo's held-out rows, standardised the same way.
        data = breast_cancer()
        centre = np.array([mean[column] for column in features])
        scale = np.array([std[column] for column in features])
        model = BreastCancerPlan()
        model.init_model({"n_features": len(features)})
        model.set_params(result.params)
        accuracy = model.evaluate((data.x_test - centre) / scale, data.y_test)["accuracy"]
        print(f"test accuracy of the federated model: {accuracy:.3f}")


async def submit_and_wait_for_approval(requests: Requests, source: str, nodes: list[str]) -> None:
    """Submit the plan to every node, then print one line per node as its operator decides.

    Raises:
        JobError: an operator rejected the plan, or did not decide in time.
    """
    submitted = await TrainingPlanApproveJob(
        requests, training_plan=source, description="logistic regression", nodes=nodes
    ).execute()
    for node, reply in sorted(submitted.items()):
        print(
            f"{node}: plan {reply.training_plan_id} submitted, waiting for its operator "
            f"(node-agent plans approve {reply.training_plan_id})"
        )
    waiting = set(nodes)
    with anyio.move_on_after(APPROVAL_WAIT):
        while waiting:
            checked = await TrainingPlanCheckJob(
                requests, experiment_id=EXPERIMENT, training_plan=source, nodes=sorted(waiting)
            ).execute()
            for node, reply in sorted(checked.items()):
                if reply.status is TrainingPlanStatus.APPROVED:
                    print(f"{node}: plan approved")
                    waiting.discard(node)
                elif reply.status is TrainingPlanStatus.REJECTED:
                    raise JobError(f"the operator of {node} rejected the plan")
            if waiting:
                await anyio.sleep(1)
    if waiting:
        raise JobError(f"no decision on the plan after {APPROVAL_WAIT:g} s from {sorted(waiting)}")


if __name__ == "__main__":
    anyio.run(main, sys.argv[1:])
