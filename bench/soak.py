"""Soak: federated rounds with 50 node agents while the broker drops connections at random.

::

    make soak                              # 10 minutes (SOAK_SECONDS=180 make soak for 3)
    python -m bench.soak --seconds 180 --agents 50 --processes 5 --close-every 2

A researcher sends one training request to every agent per round (the agents echo the
parameters back, as :func:`bench.swarm.echo_train` does), a round every ``--round-interval``
seconds, with authentication on. Meanwhile a connection of the run, chosen at random among the
researcher's and the agents', is closed through the management API about every
``--close-every`` seconds, as a broker restart or a network cut would. Everything runs in a
vhost of its own on the local broker, created and deleted through the management API; the
agents are tasks in a few processes, each agent with a connection of its own.

At the end it prints the requests sent, the replies lost (a node not answering a round within
``--timeout``: must be 0), the p50/p99 round time, and the resident memory of the researcher
and of the agent processes after the warm-up and at the end (growth must stay under 10%). The
warm-up lasts until the replay caches are full: every party keeps each message id for the
authentication window, which the soak sets to ``WINDOW`` seconds. The exit code is 1 when a
reply was lost or memory grew by 10% or more.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import anyio
import numpy as np

from bench.swarm import ECHO_HANDLERS
from broker_net.admin.management import ManagementClient
from broker_net.amqp import AmqpTransport
from broker_net.crypto.authentication import Security
from broker_net.crypto.introductions import introduce
from broker_net.messages import TrainRequest
from broker_net.topology import Topology
from node_agent.agent import NodeAgent
from node_agent.settings import NodeSettings
from researcher.requests.policies import DiscardOnTimeout, RequestStatus
from researcher.requests.router import Requests

RESEARCHER = "soak-researcher"
NAMESPACE = "soak"
WINDOW = 60.0
"""Seconds a message's timestamp may be off, and so how long its id stays in replay caches."""
MEMORY_GROWTH_LIMIT = 0.10


@dataclass
class Figures:
    """What the soak measured."""

    rounds: int = 0
    sent: int = 0
    lost: int = 0
    round_times: list[float] = field(default_factory=list)
    closed: Counter[str] = field(default_factory=Counter)
    memory_warm: dict[str, float] = field(default_factory=dict)
    memory_end: dict[str, float] = field(default_factory=dict)
    lost_detail: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SoakOptions:
    """The soak's settings (see ``python -m bench.soak --help``)."""

    seconds: float
    agents: int
    processes: int
    close_every: float
    round_interval: float
    timeout: float
    url: str
    management_url: str
    log_file: Path | None = None

    @property
    def warm_up(self) -> float:
        """Seconds before the first memory reading: the replay caches fill for ``WINDOW``."""
        return min(WINDOW + 30.0, self.seconds / 2)


async def soak(options: SoakOptions) -> Figures:
    """Run the soak in a vhost of its own and return its figures."""
    parts = urlsplit(options.url)
    user, password = unquote(parts.username or "guest"), unquote(parts.password or "guest")
    vhost = f"soak-{uuid.uuid4().hex[:8]}"
    url = f"{parts.scheme}://{parts.netloc}/{quote(vhost, safe='')}"
    async with ManagementClient(options.management_url, user, password) as api:
        await api.create_vhost(vhost)
        try:
            await api.set_permissions(vhost, user, configure=".*", write=".*", read=".*")
            with tempfile.TemporaryDirectory(prefix="broker-net-soak-") as folder:
                return await _soak(options, url, vhost, api, Path(folder))
        finally:
            with anyio.CancelScope(shield=True):
                await api.delete_vhost(vhost)


async def _soak(
    options: SoakOptions, url: str, vhost: str, api: ManagementClient, root: Path
) -> Figures:
    nodes = [f"node-{index:03d}" for index in range(options.agents)]
    introduce(RESEARCHER, root / RESEARCHER, {node: root / node for node in nodes})
    security = Security.load(
        root / RESEARCHER / "identity",
        RESEARCHER,
        "researcher",
        root / RESEARCHER / "trusted-nodes",
        window=WINDOW,
    )
    groups = [nodes[index :: options.processes] for index in range(options.processes)]
    processes = [_start_agents(url, root, group, options.log_file) for group in groups if group]
    figures = Figures()
    try:
        for process in processes:
            await anyio.to_thread.run_sync(_wait_ready, process)
        async with (
            AmqpTransport(url, connection_name=f"{RESEARCHER}:researcher") as transport,
            Requests(
                transport, RESEARCHER, topology=Topology(NAMESPACE), security=security
            ) as requests,
        ):
            await requests.wait_for_nodes(nodes, timeout=120)
            print(
                f"soak: {len(nodes)} node agents online; running for {options.seconds:g} s",
                flush=True,
            )
            started = time.monotonic()
            agent_pids = [process.pid for process in processes]
            async with anyio.create_task_group() as group:
                group.start_soon(_close_connections, options, vhost, api, figures)
                group.start_soon(_watch_memory, options, started, agent_pids, figures)
                await _rounds(options, requests, nodes, started, figures)
                figures.memory_end = await _memory_now(agent_pids)
                group.cancel_scope.cancel()
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                await anyio.to_thread.run_sync(process.wait, 30)
            except subprocess.TimeoutExpired:
                process.kill()
    return figures


async def _rounds(
    options: SoakOptions, requests: Requests, nodes: list[str], started: float, figures: Figures
) -> None:
    params = {"coef": np.zeros(30), "intercept": np.zeros(1)}
    while time.monotonic() - started < options.seconds:
        begun = time.monotonic()
        message = TrainRequest(
            researcher_id=RESEARCHER,
            experiment_id="soak",
            round=figures.rounds,
            training_plan="# echoed",
            training_plan_class="Echo",
            params=params,
            dataset_id="soak",
        )
        fed = await requests.request(message, nodes, [DiscardOnTimeout(options.timeout)])
        figures.round_times.append(time.monotonic() - begun)
        figures.rounds += 1
        figures.sent += len(nodes)
        for node, status in fed.status().items():
            if status is not RequestStatus.SUCCESS:
                figures.lost += 1
                figures.lost_detail.append(f"round {figures.rounds}: {node} {fed.reasons()}")
        await anyio.sleep(max(options.round_interval - (time.monotonic() - begun), 0.0))


async def _close_connections(
    options: SoakOptions, vhost: str, api: ManagementClient, figures: Figures
) -> None:
    chaos = random.Random(7)
    while True:
        await anyio.sleep(chaos.uniform(0.5, 1.5) * options.close_every)
        found = [c for c in await api.connections() if c.get("vhost") == vhost]
        if not found:
            continue
        victim = chaos.choice(found)
        await api.close_connection(str(victim["name"]))
        name = str((victim.get("client_properties") or {}).get("connection_name", ""))
        figures.closed["researcher" if name.startswith(RESEARCHER) else "agents"] += 1


async def _watch_memory(
    options: SoakOptions, started: float, agent_pids: Sequence[int], figures: Figures
) -> None:
    """Take the warm-up reading, then print one every minute, to tell a plateau from a leak."""
    await anyio.sleep(max(started + options.warm_up - time.monotonic(), 0.0))
    figures.memory_warm = await _memory_now(agent_pids)
    print(
        f"soak: after the {options.warm_up:g} s warm-up: {_megabytes(figures.memory_warm)}",
        flush=True,
    )
    while True:
        await anyio.sleep(60)
        now = await _memory_now(agent_pids)
        print(f"soak: at {time.monotonic() - started:.0f} s: {_megabytes(now)}", flush=True)


async def _memory_now(agent_pids: Sequence[int]) -> dict[str, float]:
    """Resident memory of the researcher and of all agent processes together, in bytes, as
    the mean of three readings a second apart (Python's heap breathes)."""
    readings: list[dict[str, float]] = []
    for _ in range(3):
        readings.append(
            {
                "researcher": _rss(os.getpid()),
                "agents": sum(_rss(pid) for pid in agent_pids),
            }
        )
        await anyio.sleep(1)
    return {key: statistics.fmean(r[key] for r in readings) for key in readings[0]}


def _rss(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return float(line.split()[1]) * 1024
    return 0.0


def _megabytes(memory: dict[str, float]) -> str:
    return ", ".join(f"{key} {value / 1e6:.1f} MB" for key, value in memory.items())


def _start_agents(
    url: str, root: Path, nodes: list[str], log_file: Path | None
) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "bench.soak", "agents", "--url", url, "--root", str(root)]
    command += ["--nodes", ",".join(nodes)]
    if log_file is not None:
        command += ["--log-file", str(log_file)]
    return subprocess.Popen(command, stdout=subprocess.PIPE)


def _wait_ready(process: subprocess.Popen[bytes]) -> None:
    assert process.stdout is not None
    line = process.stdout.readline()
    if line.strip() != b"ready":
        raise RuntimeError(f"an agent process did not start (exit code {process.poll()})")


# --- the agent processes -------------------------------------------------------------------------


async def serve_agents(url: str, root: Path, nodes: list[str]) -> None:
    """Run one NodeAgent per node, each on a connection of its own, until SIGTERM."""
    async with AsyncExitStack() as stack, anyio.create_task_group() as group:
        agents = []
        for node in nodes:
            transport = await stack.enter_async_context(
                AmqpTransport(url, connection_name=f"soak:{node}")
            )
            settings = NodeSettings(
                node_id=node,
                namespace=NAMESPACE,
                amqp_url=url,
                data_dir=root / node,
                heartbeat_interval=2.0,
                message_window=WINDOW,
            )
            agents.append(
                NodeAgent(settings, transport, handlers=dict(ECHO_HANDLERS), shutdown_grace=1.0)
            )
        for agent in agents:
            await group.start(_run_agent, agent)
        print("ready", flush=True)
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                break
        for agent in agents:
            agent.stop()


async def _run_agent(agent: NodeAgent, *, task_status: anyio.abc.TaskStatus[None]) -> None:
    async with agent:
        await agent.wait_ready()
        task_status.started()
        await agent.serve()


# --- command line ----------------------------------------------------------------------------


def _configure_logging(log_file: Path | None) -> None:
    """Warnings to ``log_file`` if given; otherwise only errors, to stderr. aio-pika's
    reconnection tracebacks are what the soak provokes: they go to the file only."""
    if log_file is not None:
        logging.basicConfig(
            filename=log_file, level=logging.WARNING,
            format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
        )  # fmt: skip
        return
    logging.basicConfig(level=logging.ERROR)
    for noisy in ("aio_pika", "aiormq"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)


def _report(options: SoakOptions, figures: Figures) -> bool:
    times = sorted(figures.round_times)
    p50 = statistics.median(times) if times else float("nan")
    p99 = times[min(len(times) - 1, int(0.99 * len(times)))] if times else float("nan")
    print()
    print(
        f"soak: {options.seconds:g} s, {options.agents} node agents in {options.processes} "
        f"processes, a connection closed about every {options.close_every:g} s"
    )
    print(f"  rounds               {figures.rounds}")
    print(f"  requests sent        {figures.sent}")
    print(f"  replies lost         {figures.lost}")
    print(f"  round time           p50 {p50:.3f} s   p99 {p99:.3f} s   max {max(times):.3f} s")
    print(
        f"  connections closed   {sum(figures.closed.values())} "
        f"(researcher {figures.closed['researcher']}, agents {figures.closed['agents']})"
    )
    print(f"  resident memory      after warm-up ({options.warm_up:g} s)   at the end   growth")
    grew_too_much = False
    for key in ("researcher", "agents"):
        warm, end = figures.memory_warm.get(key, 0.0), figures.memory_end.get(key, 0.0)
        growth = (end - warm) / warm if warm else float("inf")
        grew_too_much |= growth >= MEMORY_GROWTH_LIMIT
        print(
            f"    {key:<12}       {warm / 1e6:8.1f} MB              {end / 1e6:8.1f} MB  "
            f"{growth:+.1%}"
        )
    for detail in figures.lost_detail[:10]:
        print(f"  lost: {detail}")
    passed = figures.lost == 0 and not grew_too_much and figures.rounds > 0
    print("PASS" if passed else "FAIL")
    return passed


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.soak``: run the soak and report; ``agents`` serves agent processes."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description="Soak broker-net while connections drop."
    )
    parser.add_argument("mode", nargs="?", default="soak", choices=["soak", "agents"])
    parser.add_argument(
        "--seconds",
        type=float,
        default=float(os.environ.get("SOAK_SECONDS", "600")),
        help="how long to run (env SOAK_SECONDS; default 600)",
    )
    parser.add_argument("--agents", type=int, default=50, help="node agents (default 50)")
    parser.add_argument("--processes", type=int, default=5, help="agent processes (default 5)")
    parser.add_argument(
        "--close-every",
        type=float,
        default=2.0,
        help="mean seconds between two closed connections (default 2)",
    )
    parser.add_argument(
        "--round-interval",
        type=float,
        default=1.0,
        help="seconds from one round's start to the next (default 1)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds a node may take to answer a round (default 60)",
    )
    parser.add_argument(
        "--url",
        default="amqp://guest:guest@127.0.0.1:5672/",
        help="the broker; the soak uses a vhost of its own",
    )
    parser.add_argument("--management-url", default="http://127.0.0.1:15672")
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--nodes", help=argparse.SUPPRESS)
    parser.add_argument("--log-file", type=Path, help="write every process's warnings here")
    args = parser.parse_args(argv)
    _configure_logging(args.log_file)
    if args.mode == "agents":
        anyio.run(serve_agents, args.url, args.root, args.nodes.split(","))
        return 0
    options = SoakOptions(
        seconds=args.seconds,
        agents=args.agents,
        processes=args.processes,
        close_every=args.close_every,
        round_interval=args.round_interval,
        timeout=args.timeout,
        url=args.url,
        management_url=args.management_url,
        log_file=args.log_file.resolve() if args.log_file else None,
    )
    figures = anyio.run(soak, options)
    return 0 if _report(options, figures) else 1


if __name__ == "__main__":
    sys.exit(main())
