"""A sent request holds no reference to its message: a large model the caller let go of is
freed while the replies come in, on either transport."""

from __future__ import annotations

import gc
import weakref

import anyio
import numpy as np
import pytest

from broker_net.messages import TrainRequest
from broker_net.topology import Topology
from researcher.requests.policies import DiscardOnTimeout, RequestStatus
from researcher.requests.router import Requests

pytestmark = pytest.mark.anyio


def _train_request(params: np.ndarray) -> TrainRequest:
    return TrainRequest(
        researcher_id="alice", experiment_id="e", round=1, training_plan="class Plan: ...",
        training_plan_class="Plan", dataset_id="d", params={"w": params},
    )  # fmt: skip


async def test_the_parameters_of_a_sent_request_are_freed_before_its_replies(
    make_transport, topology: Topology
) -> None:
    params = np.arange(3 * 1024**2, dtype=np.float32)  # 12 MiB: sent in chunks over RabbitMQ
    alive = weakref.ref(params)
    async with make_transport("node") as node_transport, make_transport("researcher") as t:
        await node_transport.declare(*topology.node_declarations("n1"))
        async with Requests(t, "alice", topology=topology) as requests:
            freed_while_waiting: list[bool] = []

            async def watch() -> None:
                # The node never answers; the request waits for its timeout meanwhile.
                with anyio.fail_after(5):
                    while alive() is not None:
                        gc.collect()
                        await anyio.sleep(0.02)
                freed_while_waiting.append(True)

            async with anyio.create_task_group() as group:
                group.start_soon(watch)
                message = _train_request(params)
                del params
                fed = requests.send(message, ["n1"], [DiscardOnTimeout(1.5)])
                del message
                async with fed:
                    assert freed_while_waiting == [True]
            assert fed.status() == {"n1": RequestStatus.TIMEOUT}


async def test_a_message_the_caller_keeps_is_still_the_callers(
    make_transport, topology: Topology
) -> None:
    params = np.arange(1024, dtype=np.float32)
    message = _train_request(params)
    async with make_transport("node") as node_transport, make_transport("researcher") as t:
        await node_transport.declare(*topology.node_declarations("n1"))
        async with Requests(t, "alice", topology=topology) as requests:
            await requests.request(message, ["n1"], [DiscardOnTimeout(0.2)])
    assert message.params["w"] is params and float(params.sum()) == 1024 * 1023 / 2
