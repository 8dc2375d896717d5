"""CPU per round trip of the request layer, in one process on the in-memory transport.

A ``Requests`` and ``--nodes`` ``NodeAgent`` exchange ``--count`` pings (after a warm-up) over
:class:`~broker_net.memory.MemoryTransport`; the figure is the process's CPU time per round
trip, both sides together, with no broker in the way. On a shared machine it moves by a few
per cent where the broker benchmarks move by tens, so it is what per-message changes are
measured with. ``--profile`` adds a cProfile of the timed pings, sorted by own time, and splits
the CPU between the node's side (``Dispatcher.handle``) and the rest.

    python -m bench.profile_roundtrip --count 3000 --profile
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

import anyio

from broker_net.memory import MemoryBroker, MemoryTransport
from broker_net.messages import PingRequest
from broker_net.topology import Topology
from node_agent.agent import NodeAgent
from node_agent.settings import NodeSettings
from researcher.requests.policies import DiscardOnTimeout
from researcher.requests.router import Requests


async def _round_trips(
    count: int, warmup: int, profiler: cProfile.Profile | None, fanout: int = 1
) -> float:
    topology = Topology("prof")
    broker = MemoryBroker()
    nodes = [f"n{index}" for index in range(fanout)]
    with tempfile.TemporaryDirectory(prefix="profile-") as folder:
        async with AsyncExitStack() as stack:
            node_transport = await stack.enter_async_context(MemoryTransport(broker))
            for node in nodes:
                settings = NodeSettings(
                    node_id=node, data_dir=Path(folder) / node, namespace="prof",
                    security=False, heartbeat_interval=3600.0,
                )  # fmt: skip
                agent = await stack.enter_async_context(
                    NodeAgent(settings, node_transport, shutdown_grace=0.1)
                )
                await agent.wait_ready()
            researcher_transport = await stack.enter_async_context(MemoryTransport(broker))
            requests = await stack.enter_async_context(
                Requests(researcher_transport, "alice", topology=topology)
            )
            policies = [DiscardOnTimeout(600)]
            ping = PingRequest(researcher_id="alice")
            for _ in range(warmup):
                await requests.request(ping, nodes, policies)
            if profiler is not None:
                profiler.enable()
            start = time.process_time()
            for _ in range(count):
                fed = await requests.request(ping, nodes, policies)
                assert len(fed.replies()) == fanout
            cpu = time.process_time() - start
            if profiler is not None:
                profiler.disable()
    return cpu / count


def main(argv: list[str] | None = None) -> None:
    """Print the CPU per round trip (and a profile with ``--profile``)."""
    parser = argparse.ArgumentParser(prog="python -m bench.profile_roundtrip")
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--nodes", type=int, default=1, help="ping this many nodes at once")
    args = parser.parse_args(argv)
    profiler = cProfile.Profile() if args.profile else None
    per_trip = anyio.run(_round_trips, args.count, args.warmup, profiler, args.nodes)
    print(f"CPU per round trip: {per_trip * 1e6:.1f} us (both sides, {args.count} requests to "
          f"{args.nodes} nodes)")  # fmt: skip
    if profiler is None:
        return
    stats = pstats.Stats(profiler)
    out = io.StringIO()
    stats.stream = out  # type: ignore[attr-defined]
    stats.sort_stats("tottime").print_stats(args.top)
    total = sum(row[2] for row in stats.stats.values())  # type: ignore[attr-defined]
    node = sum(
        row[3]
        for (file, _, name), row in stats.stats.items()  # type: ignore[attr-defined]
        if name == "handle" and file.endswith("dispatch.py")
    )
    print(out.getvalue())
    print(f"profiled total {total * 1e6 / args.count:.1f} us per trip; node's Dispatcher.handle "
          f"{node * 1e6 / args.count:.1f} us")  # fmt: skip


if __name__ == "__main__":
    main()
