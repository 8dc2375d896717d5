"""Await federated jobs from your own async code.

Run it against node agents that hold the demo data (``broker-net-demo setup-node``
then ``node-agent start``) and trust this researcher, with the researcher's settings in the
environment (``BROKER_NET_RESEARCHER_*``) and the node ids as arguments::

    python docs/examples/federated_run.py hospital-a hospital-b
"""

from __future__ import annotations

import sys

import anyio

from broker_net import AmqpTransport, ListRequest, PingRequest
from researcher import (
    DiscardOnTimeout,
    Experiment,
    FARequestJob,
    Requests,
    ResearcherSettings,
    StopOnError,
)
from simulation import BreastCancerPlan


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
        await requests.wait_for_nodes(nodes, timeout=30)

        # One request to many nodes; each node's timeout runs from its own send time.
        ping = PingRequest(researcher_id=settings.researcher_id)
        async with requests.send(ping, nodes, [DiscardOnTimeout(2)]) as fed:
            for node, timing in fed.timings().items():
                print(node, fed.status()[node].value, f"{timing.round_trip:.4f} s")

        # Which dataset each node holds (metadata only).
        listing = await requests.request(
            ListRequest(researcher_id=settings.researcher_id, tags=["breast-cancer"]), nodes
        )
        datasets = {node: reply.datasets[0].dataset_id for node, reply in listing.replies().items()}

        stats = await FARequestJob(
            requests, experiment_id="example", fa_id="fa-1", datasets=datasets,
            stats=["count", "mean", "std"], dataset_schema=["mean_radius", "target"],
        ).execute()  # fmt: skip
        print("pooled statistics:", stats.statistics["columns"])

        experiment = Experiment(
            requests, plan=BreastCancerPlan, datasets=datasets, rounds=3,
            model_args={"n_features": 30}, policies=[StopOnError(), DiscardOnTimeout(120)],
        )  # fmt: skip
        result = await experiment.run()
        print("last round:", result.rounds[-1].aggregated_metrics)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1:])
