"""What security costs: authenticating every message, and secure aggregation.

Two figures, each against the same work without the feature, in the same run:

- (a) the round trip of a small ping with every envelope authenticated (pairwise HMAC, replay
  cache, body digest) against the same ping with security off; target at most 1.10x;
- (b) one FedAvg round of 10 nodes and 1e6 float64 parameters with secure aggregation (masking
  on each node, the reveal exchange, unmasking on the researcher) against the same round
  aggregated in the clear; target at most 3x. Both rounds send the global parameters to the
  nodes and their updates back, with security on; the one-time setup (keys, shares, deliver)
  is reported apart.

Node agents run in this process, each on a connection of its own, with a training handler that
answers at once (the global parameters plus a node-specific offset), so the figures hold the
network, codec and cryptography, not a training plan. They run on RabbitMQ, in a vhost created
for the run through the management API, when ``BENCH_AMQP_URL``
(``amqp://guest:guest@127.0.0.1:5672/``) and ``BENCH_MANAGEMENT_URL``
(``http://guest:guest@127.0.0.1:15672``) answer, and on the in-memory transport otherwise.

Usage: ``python -m bench.bench_security`` (also part of ``python -m bench.run``).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import anyio
import numpy as np
from rich.console import Console

from bench import Row, row
from broker_net.admin.management import ManagementClient
from broker_net.amqp import AmqpTransport
from broker_net.crypto.authentication import Security
from broker_net.crypto.identities import Identity, TrustStore
from broker_net.errors import TransportError
from broker_net.memory import MemoryBroker, MemoryTransport
from broker_net.messages import TrainReply, TrainRequest
from broker_net.topology import Topology
from broker_net.transport import Transport
from node_agent.agent import NodeAgent
from node_agent.context import NodeContext
from node_agent.handlers import HANDLERS
from node_agent.secagg_handlers import mask_params, secagg_node_for
from node_agent.settings import NodeSettings
from researcher.jobs.aggregation import fedavg
from researcher.jobs.secagg import SecureAggregation
from researcher.requests.policies import DiscardOnTimeout, StopOnError
from researcher.requests.router import Requests

TARGET_AUTH = 1.10
TARGET_SECAGG = 3.0
PINGS = 1000
WARMUP = 50
NODES = 10
PARAMETERS = 1_000_000
ROUNDS = 5
SAMPLES = 500
RESEARCHER = "alice"

Transports = Callable[[str], AbstractAsyncContextManager[Transport]]


@asynccontextmanager
async def _network() -> AsyncIterator[tuple[str, Transports]]:
    """Yield where the benchmark runs and a maker of transports connected there."""
    amqp = urlsplit(os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"))
    management = urlsplit(
        os.environ.get("BENCH_MANAGEMENT_URL", "http://guest:guest@127.0.0.1:15672")
    )
    vhost = f"bench-security-{uuid.uuid4().hex[:8]}"
    client = ManagementClient(
        f"{management.scheme}://{management.hostname}:{management.port or 15672}",
        management.username or "guest",
        management.password or "guest",
    )
    async with client:
        try:
            await client.create_vhost(vhost)
            await client.set_permissions(
                vhost, amqp.username or "guest", configure=".*", write=".*", read=".*"
            )
        except TransportError:
            broker = MemoryBroker()
            yield "in-memory transport", lambda name: MemoryTransport(broker)
            return
        url = urlunsplit(amqp._replace(path="/" + quote(vhost, safe="")))
        try:
            yield "RabbitMQ", lambda name: AmqpTransport(url, connection_name=f"bench:{name}")
        finally:
            await client.delete_vhost(vhost)


def _securities(nodes: list[str]) -> tuple[Security, dict[str, Security]]:
    researcher = Identity.generate(RESEARCHER, "researcher")
    identities = {node: Identity.generate(node, "node") for node in nodes}
    trusted_nodes = TrustStore(tuple(identity.public() for identity in identities.values()))
    return Security(researcher, trusted_nodes), {
        node: Security(identity, TrustStore((researcher.public(),)))
        for node, identity in identities.items()
    }


async def _agent(
    stack: AsyncExitStack,
    transports: Transports,
    folder: Path,
    namespace: str,
    node: str,
    security: Security | None,
    handlers: dict[str, Any] | None = None,
) -> None:
    settings = NodeSettings(
        node_id=node, data_dir=folder / namespace / node, namespace=namespace,
        security=security is not None, heartbeat_interval=5.0,
    )  # fmt: skip
    transport = await stack.enter_async_context(transports(node))
    agent = await stack.enter_async_context(
        NodeAgent(settings, transport, handlers=handlers, security=security)
    )
    await agent.wait_ready()


async def _researcher(
    stack: AsyncExitStack, transports: Transports, namespace: str, security: Security | None
) -> Requests:
    transport = await stack.enter_async_context(transports(f"researcher-{namespace}"))
    return await stack.enter_async_context(
        Requests(transport, RESEARCHER, topology=Topology(namespace), security=security)
    )


# --- (a) authentication ------------------------------------------------------------------------


async def _ping_time(requests: Requests, node: str) -> float:
    started = time.perf_counter()
    fed = await requests.ping([node], timeout=10)
    elapsed = time.perf_counter() - started
    if not fed.replies():
        raise RuntimeError(f"node {node} did not answer a ping: {fed.reasons()}")
    return elapsed


async def _authentication(transports: Transports, folder: Path) -> tuple[float, float]:
    """Median ping round trip (seconds) with security on and off.

    The two kinds of ping alternate one by one, so that the load of the machine weighs on
    both alike.
    """
    alice, nodes = _securities(["guarded"])
    async with AsyncExitStack() as stack:
        await _agent(stack, transports, folder, "on", "guarded", nodes["guarded"])
        await _agent(stack, transports, folder, "off", "open", None)
        secured = await _researcher(stack, transports, "on", alice)
        plain = await _researcher(stack, transports, "off", None)
        on: list[float] = []
        off: list[float] = []
        for index in range(PINGS + WARMUP):
            pair = [(secured, "guarded", on), (plain, "open", off)]
            for requests, node, times in pair[:: 1 - 2 * (index % 2)]:
                elapsed = await _ping_time(requests, node)
                if index >= WARMUP:
                    times.append(elapsed)
    return statistics.median(on), statistics.median(off)


# --- (b) secure aggregation --------------------------------------------------------------------


def _train_handler(offset: float) -> Any:
    """A training handler that answers at once: the global parameters plus ``offset``,
    masked when the request asks for secure aggregation."""

    async def handle(request: TrainRequest, context: NodeContext) -> TrainReply:
        update = {name: np.asarray(value) + offset for name, value in request.params.items()}
        fields: dict[str, Any] = {"params": update}
        if request.secagg_arguments:
            node, round_ = secagg_node_for(request, context)
            masked = await anyio.to_thread.run_sync(mask_params, node, round_, update, SAMPLES)
            fields = {"params": masked, "encrypted": True}
        return TrainReply(
            request_id=request.request_id, researcher_id=request.researcher_id,
            node_id=context.node_id, experiment_id=request.experiment_id, round=request.round,
            success=True, sample_size=SAMPLES, **fields,
        )  # fmt: skip

    return handle


async def _round(
    requests: Requests,
    nodes: list[str],
    params: dict[str, Any],
    secagg: SecureAggregation | None,
    round_: int,
) -> float:
    started = time.perf_counter()
    message = TrainRequest(
        researcher_id=RESEARCHER, experiment_id="bench", round=round_, training_plan="-",
        training_plan_class="-", dataset_id="-", params=params,
        secagg_arguments=secagg.arguments(round_) if secagg is not None else None,
    )  # fmt: skip
    fed = await requests.request(message, nodes, [StopOnError(), DiscardOnTimeout(120)])
    replies: dict[str, TrainReply] = fed.replies()
    if set(replies) != set(nodes):
        raise RuntimeError(f"a node failed the round: {fed.reasons()}")
    if secagg is None:
        fedavg([reply.params or {} for reply in replies.values()], [SAMPLES] * len(nodes))
    else:
        _, survivors = await secagg.fedavg(round_, replies)
        assert len(survivors) == len(nodes)
    return time.perf_counter() - started


async def _secure_aggregation(transports: Transports, folder: Path) -> tuple[float, float, float]:
    """Median round time (seconds) with and without secure aggregation, and the setup time."""
    nodes = [f"node-{index:02d}" for index in range(NODES)]
    alice, securities = _securities(nodes)
    rng = np.random.default_rng(0)
    params = {"weight": rng.normal(size=(1000, 999)), "bias": rng.normal(size=1000)}
    assert sum(array.size for array in params.values()) == PARAMETERS
    async with AsyncExitStack() as stack:
        for index, node in enumerate(nodes):
            handlers = dict(HANDLERS) | {"train_request": _train_handler(0.001 * index)}
            await _agent(stack, transports, folder, "secagg", node, securities[node], handlers)
        requests = await _researcher(stack, transports, "secagg", alice)
        started = time.perf_counter()
        secagg = SecureAggregation(requests, experiment_id="bench", nodes=nodes, rounds=ROUNDS + 1)
        await secagg.setup()
        setup = time.perf_counter() - started
        await _round(requests, nodes, params, None, 0)
        await _round(requests, nodes, params, secagg, 0)
        plain, secure = [], []
        for round_ in range(1, ROUNDS + 1):
            plain.append(await _round(requests, nodes, params, None, round_))
            secure.append(await _round(requests, nodes, params, secagg, round_))
    return statistics.median(secure), statistics.median(plain), setup


def run() -> list[Row]:
    """Measure (a) and (b); milliseconds."""
    return anyio.run(_measure)


async def _measure() -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="bench-security-") as folder:
        async with _network() as (where, transports):
            on, off = await _authentication(transports, Path(folder))
            secure, plain, setup = await _secure_aggregation(transports, Path(folder))
    ms = 1000
    size = f"{NODES} nodes x {PARAMETERS:.0e} float64"
    return [
        row(
            f"ping round trip, authenticated vs not ({where})", on * ms, off * ms, "ms", TARGET_AUTH
        ),
        row(
            f"FedAvg round, secure aggregation vs plain, {size} ({where}, in-process nodes)",
            secure * ms,
            plain * ms,
            "ms",
            TARGET_SECAGG,
        ),
        row(
            f"secure aggregation setup vs one plain round, {NODES} nodes ({where})",
            setup * ms,
            plain * ms,
            "ms",
            None,
        ),
    ]


if __name__ == "__main__":
    figures = run()
    console = Console()
    for figure in figures:
        target = "" if figure["target"] is None else f" (target <= {figure['target']:.2f}x)"
        console.print(
            f"{figure['name']}: {figure['ours']:.2f} {figure['unit']} vs "
            f"{figure['baseline']:.2f} {figure['unit']}, ratio {figure['ratio']:.2f}x{target}"
        )
