"""The two sides of the network benchmarks, each run in a process of its own.

``nodes`` serves node agents until its standard input closes; ``researcher`` runs one scenario
against them and prints its figures. Both come in two kinds: ``ours`` (NodeAgent and Requests)
and ``raw``, plain aio-pika doing the same work with the same guarantees: durable queues,
persistent messages, publisher confirms, manual acks, bodies above 4 MiB in chunks of 4 MiB
with eight published ahead of their confirms. Each process prints its peak resident memory
(``VmHWM``) as the last line of its JSON output.

    python -m bench.parties nodes --kind raw --url URL --namespace NS --count 10 --dir DIR
    python -m bench.parties researcher --kind raw --url URL --namespace NS --scenario ping ...

``BENCH_CHUNKING=<chunk MiB>,<window>`` (e.g. ``1,16``) changes our side's chunk size and
publish window in both processes, for a sweep; raw keeps 4 MiB and 8.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import math
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aio_pika
import anyio
import numpy as np

import broker_net.amqp.transport
from bench.swarm import swarm
from broker_net.amqp import AmqpTransport
from broker_net.chunking import Chunking
from broker_net.crypto.authentication import Security
from broker_net.messages import PingRequest, TrainReply, TrainRequest
from broker_net.topology import Topology
from researcher.requests.policies import DiscardOnTimeout
from researcher.requests.router import Requests

CHUNK = 4 * 1024**2
WINDOW = 8
RESEARCHER = "alice"


def peak_rss() -> int:
    """This process's peak resident memory in bytes (``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def params_of(size: int) -> dict[str, np.ndarray[Any, Any]]:
    """Float32 parameters of ``size`` bytes in all, in four layers."""
    per_layer = max(size // 4 // 4, 1)
    rng = np.random.default_rng(0)
    return {f"layer{i}": rng.standard_normal(per_layer, dtype=np.float32) for i in range(4)}


# --- raw aio-pika ------------------------------------------------------------------------------


class RawEndpoint:
    """What both raw sides share: confirmed, persistent publishing, chunked above 4 MiB, and
    reassembly of chunked deliveries into one preallocated buffer."""

    def __init__(self, channel: aio_pika.abc.AbstractChannel) -> None:
        self.channel = channel
        self._transfers: dict[str, bytearray] = {}
        self._received: dict[str, int] = {}

    async def publish(
        self,
        exchange: aio_pika.abc.AbstractExchange,
        routing_key: str,
        body: bytes,
        *,
        correlation_id: str,
        reply_to: str | None = None,
        mandatory: bool = False,
    ) -> None:
        def message(part: bytes, headers: dict[str, Any]) -> aio_pika.Message:
            return aio_pika.Message(
                part, correlation_id=correlation_id, reply_to=reply_to, headers=headers,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )  # fmt: skip

        if len(body) <= CHUNK:
            await exchange.publish(message(body, {}), routing_key, mandatory=mandatory)
            return
        count = math.ceil(len(body) / CHUNK)
        transfer = uuid.uuid4().hex
        view = memoryview(body)
        window = asyncio.Semaphore(WINDOW)

        async def send(index: int) -> None:
            try:
                part = bytes(view[index * CHUNK : (index + 1) * CHUNK])
                headers = {"x-id": transfer, "x-i": index, "x-n": count, "x-size": len(body)}
                await exchange.publish(message(part, headers), routing_key, mandatory=mandatory)
            finally:
                window.release()

        tasks = []
        for index in range(count):
            await window.acquire()
            tasks.append(asyncio.ensure_future(send(index)))
        await asyncio.gather(*tasks)

    def take(self, incoming: aio_pika.abc.AbstractIncomingMessage) -> bytes | bytearray | None:
        """The whole body once every chunk is in; the chunk is copied into place."""
        headers = incoming.headers or {}
        if "x-id" not in headers:
            return incoming.body
        transfer = str(headers["x-id"])
        buffer = self._transfers.get(transfer)
        if buffer is None:
            buffer = self._transfers[transfer] = bytearray(int(str(headers["x-size"])))
            self._received[transfer] = 0
        start = int(str(headers["x-i"])) * CHUNK
        buffer[start : start + len(incoming.body)] = incoming.body
        self._received[transfer] += 1
        if self._received[transfer] < int(str(headers["x-n"])):
            return None
        del self._transfers[transfer], self._received[transfer]
        return buffer


async def raw_nodes(url: str, topology: Topology, node_ids: list[str], connections: int) -> None:
    """Serve ``node_ids`` with plain aio-pika: echo every request to its reply_to."""
    opened = [await aio_pika.connect(url) for _ in range(connections)]
    # As AmqpTransport does: one publishing channel per connection, one channel per consumer.
    publishers = [RawEndpoint(await c.channel(publisher_confirms=True)) for c in opened]
    try:
        for index, node_id in enumerate(node_ids):
            connection = opened[index % connections]
            publisher = publishers[index % connections]
            replies = await publisher.channel.declare_exchange(
                topology.replies_exchange.name, aio_pika.ExchangeType.DIRECT, durable=True
            )
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=16)
            requests = await channel.declare_exchange(
                topology.requests_exchange.name, aio_pika.ExchangeType.DIRECT, durable=True
            )
            queue = await channel.declare_queue(topology.node_queue(node_id).name, durable=True)
            await queue.bind(requests, node_id)
            await queue.consume(_raw_echo(publisher, replies))
        print("ready", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.read)
    finally:
        for connection in opened:
            await connection.close()


def _raw_echo(
    endpoint: RawEndpoint, replies: aio_pika.abc.AbstractExchange
) -> Callable[[aio_pika.abc.AbstractIncomingMessage], Awaitable[None]]:
    async def on_message(incoming: aio_pika.abc.AbstractIncomingMessage) -> None:
        body = endpoint.take(incoming)
        if body is not None:
            params = np.frombuffer(body, dtype=np.float32)  # the node's view of the numbers
            await endpoint.publish(
                replies, incoming.reply_to or "", params.tobytes(),
                correlation_id=incoming.correlation_id or "",
            )  # fmt: skip
        await incoming.ack()

    return on_message


class RawResearcher:
    """Sends with plain aio-pika and matches replies to futures by correlation id."""

    def __init__(self, url: str, topology: Topology) -> None:
        self.url = url
        self.topology = topology
        self._waiting: dict[str, tuple[asyncio.Future[None], int, list[Any]]] = {}

    async def __aenter__(self) -> RawResearcher:
        self.connection = await aio_pika.connect(self.url)
        self.endpoint = RawEndpoint(await self.connection.channel(publisher_confirms=True))
        self.requests = await self.endpoint.channel.declare_exchange(
            self.topology.requests_exchange.name, aio_pika.ExchangeType.DIRECT, durable=True
        )
        replies = await self.endpoint.channel.declare_exchange(
            self.topology.replies_exchange.name, aio_pika.ExchangeType.DIRECT, durable=True
        )
        channel = await self.connection.channel()
        await channel.set_qos(prefetch_count=512)
        self.reply_queue = self.topology.researcher_queue(RESEARCHER).name
        queue = await channel.declare_queue(self.reply_queue, durable=True)
        await queue.bind(replies, self.reply_queue)
        await queue.consume(self._on_reply)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.connection.close()

    async def _on_reply(self, incoming: aio_pika.abc.AbstractIncomingMessage) -> None:
        body = self.endpoint.take(incoming)
        if body is not None:
            waiting = self._waiting.get(incoming.correlation_id or "")
            if waiting is not None:
                future, expected, bodies = waiting
                bodies.append(np.frombuffer(body, dtype=np.float32) if len(body) > CHUNK else body)
                if len(bodies) == expected and not future.done():
                    future.set_result(None)
        await incoming.ack()

    async def _send_one(self, node: str, body: bytes, correlation_id: str) -> None:
        await self.endpoint.publish(
            self.requests, node, body, correlation_id=correlation_id,
            reply_to=self.reply_queue, mandatory=True,
        )  # fmt: skip

    async def request(self, body: bytes, nodes: list[str]) -> list[Any]:
        """Send ``body`` to every node and wait for all the replies."""
        correlation_id = uuid.uuid4().hex
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        bodies: list[Any] = []
        self._waiting[correlation_id] = (future, len(nodes), bodies)
        try:
            await asyncio.gather(*(self._send_one(node, body, correlation_id) for node in nodes))
            await asyncio.wait_for(future, timeout=600)
        finally:
            del self._waiting[correlation_id]
        return bodies


# --- scenarios ---------------------------------------------------------------------------------


async def _ours(url: str, topology: Topology, security_dir: Path | None) -> Requests:
    security = None
    if security_dir is not None:
        security = Security.load(
            security_dir / "identity", RESEARCHER, "researcher", security_dir / "trusted-nodes"
        )
    transport = await AmqpTransport(url, connection_name="bench-researcher").__aenter__()
    requests = Requests(transport, RESEARCHER, topology=topology, security=security)
    return await requests.__aenter__()


async def run_researcher(args: argparse.Namespace) -> dict[str, Any]:
    """Run one scenario; return its timings in seconds."""
    topology = Topology(args.namespace)
    nodes = [f"node-{index:03d}" for index in range(args.count)]
    if args.kind == "raw":
        async with RawResearcher(args.url, topology) as raw:
            return await _scenario(args, nodes, raw_send(raw))
    requests = await _ours(args.url, topology, args.security_dir)
    try:
        send, prepare = ours_send(requests)
        return await _scenario(args, nodes, send, prepare)
    finally:
        await requests.__aexit__(None, None, None)
        transport = requests.transport
        assert isinstance(transport, AmqpTransport)
        await transport.__aexit__(None, None, None)


Send = Callable[[str, list[str], int], Awaitable[None]]


def raw_send(raw: RawResearcher) -> Send:
    """Send a ping (``size == 0``) or ``size`` bytes of float32 parameters, wait for all."""
    ping = bytes(300)
    blobs: dict[int, bytes] = {}

    async def send(scenario: str, nodes: list[str], size: int) -> None:
        if size == 0:
            await raw.request(ping, nodes)
            return
        if size not in blobs:
            blobs.clear()
            params = params_of(size)
            blobs[size] = b"".join(array.tobytes() for array in params.values())
        replies = await raw.request(blobs[size], nodes)
        assert all(memoryview(reply).nbytes == len(blobs[size]) for reply in replies)

    return send


HAND_OVER_SIZE = 256 * 1024**2
"""From this size the researcher hands its parameters over: it keeps no reference to the
message it sends, as a researcher with a large model that needs no copy of it would."""


def ours_send(requests: Requests) -> tuple[Send, Callable[[int], None]]:
    """The same through Requests and NodeAgent: a PingRequest, or a TrainRequest echoed; and
    the preparation of the next message, done before each timed send."""
    trains: dict[int, TrainRequest] = {}

    def prepare(size: int) -> None:
        if size and size not in trains:
            trains.clear()
            trains[size] = TrainRequest(
                researcher_id=RESEARCHER, experiment_id="bench", round=1,
                training_plan="class Plan: ...", training_plan_class="Plan",
                dataset_id="bench", params=params_of(size),
            )  # fmt: skip

    async def send(scenario: str, nodes: list[str], size: int) -> None:
        prepare(size)
        if size == 0:
            message: Any = PingRequest(researcher_id=RESEARCHER)
        elif size >= HAND_OVER_SIZE:
            message = trains.pop(size)
        else:
            message = trains[size]
        fed = requests.send(message, nodes, [DiscardOnTimeout(600)])
        del message
        async with fed:
            pass
        replies = fed.replies()
        if len(replies) != len(nodes):
            raise RuntimeError(f"{scenario}: {fed.status()} {fed.reasons()}")
        if size:
            assert all(isinstance(r, TrainReply) and r.params for r in replies.values())

    return send, prepare


async def _scenario(
    args: argparse.Namespace, nodes: list[str], send: Send,
    prepare: Callable[[int], None] | None = None,
) -> dict[str, Any]:  # fmt: skip
    for _ in range(args.warmup):
        await send(args.scenario, nodes, args.size)
    timings = []
    cpu = 0.0
    for _ in range(args.repeat):
        if prepare is not None:
            prepare(args.size)  # neither timed nor counted
        cpu_start = time.process_time()
        start = time.perf_counter()
        await send(args.scenario, nodes, args.size)
        timings.append(time.perf_counter() - start)
        cpu += time.process_time() - cpu_start
    return {
        "timings": timings,
        "cpu_per_op": cpu / max(args.repeat, 1),
        "p50": statistics.median(timings),
        "p99": float(np.percentile(timings, 99)),
    }


def _node_main(args: argparse.Namespace) -> None:
    topology = Topology(args.namespace)
    nodes = [f"node-{index:03d}" for index in range(args.first, args.first + args.count)]

    async def main() -> None:
        if args.kind == "raw":
            await raw_nodes(args.url, topology, nodes, args.connections)
            return
        # Heartbeats every 30 s: the baseline sends none, and a benchmark of requests should
        # not measure 250 nodes' presence traffic on the side.
        async with swarm(
            args.url, args.namespace, nodes, args.dir, connections=args.connections,
            security=args.security, heartbeat_interval=30.0,
        ):  # fmt: skip
            print("ready", flush=True)
            await anyio.to_thread.run_sync(sys.stdin.read)

    anyio.run(main)
    print(json.dumps({"peak_rss": peak_rss()}), flush=True)


def _apply_chunking(setting: str) -> None:
    """Our transports' chunking from ``BENCH_CHUNKING`` (``<chunk MiB>,<window>``)."""
    if not setting:
        return
    chunk_mb, window = setting.split(",")
    transport_module: Any = broker_net.amqp.transport
    transport_module.Chunking = functools.partial(
        Chunking, chunk_size=int(float(chunk_mb) * 1024**2), publish_window=int(window)
    )


def main(argv: list[str] | None = None) -> None:
    """Run one side of a benchmark (see the module docstring)."""
    _apply_chunking(os.environ.get("BENCH_CHUNKING", ""))
    parser = argparse.ArgumentParser(prog="python -m bench.parties")
    parser.add_argument("side", choices=["nodes", "researcher"])
    parser.add_argument("--kind", choices=["ours", "raw"], required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--first", type=int, default=0, help="nodes: index of the first node")
    parser.add_argument("--dir", type=Path, default=Path("."))
    parser.add_argument("--connections", type=int, default=2)
    parser.add_argument("--scenario", default="ping")
    parser.add_argument("--size", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--security-dir", type=Path, help="researcher: identity and trust")
    parser.add_argument("--security", action="store_true", help="nodes: authenticate")
    args = parser.parse_args(argv)
    if args.side == "nodes":
        _node_main(args)
        return
    result = anyio.run(run_researcher, args)
    result["peak_rss"] = peak_rss()
    result["cpu"] = time.process_time()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
