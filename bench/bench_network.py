"""The request layer end to end on the local RabbitMQ, against plain aio-pika in the same run.

Figures, each ours (Requests and NodeAgent) against the raw baseline of
:mod:`bench.parties` doing the same work with the same guarantees:

- round trip p50 and p99: sequential pings to one node;
- fan-out and collection: one ping to 1, 10, 100, 250 and 1,000 nodes at once, median time
  (the nodes run 250 to a process, four processes for 1,000);
  both taken in alternating turns (raw, ours; then ours, raw; ...), each row's ratio being the
  median of the turns' ratios;
- payloads: float32 parameters of 1 MB, 10 MB, 100 MB and 1 GB in a TrainRequest echoed back by
  the node, in MB/s of parameters moved (out and back);
- peak resident memory of the researcher and of the node for 100 MB and 1 GB, each side in a
  process of its own;
- security on and off: the round trip with every envelope authenticated;
- CPU per message on each side: the researcher's process time over its timed requests, and
  the node processes' (``/proc/<pid>/stat``) over each researcher run less what they spend
  idle (heartbeats, timers) over as long, per request or reply, summed over the turns.

The node side runs as a separate process (many agents as tasks sharing two connections, see
:mod:`bench.swarm`), the researcher side as another, so neither figure includes the other's
CPU. A vhost is created for the run through the management API and deleted afterwards.

Configuration, by environment or on the command line of ``python -m bench.bench_network``:
``BENCH_QUICK=1`` / ``--quick`` (no 1 GB, no 250 or 1,000 nodes, fewer repetitions),
``BENCH_PARTS=latency,payloads,security`` (the parts to run: ``BENCH_PARTS=payloads
BENCH_PAYLOAD_MB=10,100`` runs only those echoes), ``BENCH_PAYLOAD_MB=1,10,100,1024``,
``BENCH_FANOUT=1,10,100,250,1000``, ``BENCH_AMQP_URL``
(``amqp://guest:guest@127.0.0.1:5672/``) and ``BENCH_MANAGEMENT_URL``
(``http://guest:guest@127.0.0.1:15672``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from bench import Row, row

ROOT = Path(__file__).resolve().parents[1]
MB = 1024**2
TARGET_ROUND_TRIP = 1.15
TARGET_FANOUT = 1.2
"""Fan-out and collection to 100 and 1,000 nodes, at p50."""
FILE_LIMIT = 1024
"""The usual soft limit of open files for a process."""
NODES_PER_PROCESS = 250
"""Node agents in one node-side process; 1,000 nodes run in four."""
TARGET_CPU = 1.15
"""CPU per message on each side, ours against raw."""
TARGET_ECHO_TIME = 1 / 0.95
"""Echo time of 10 MB and more against raw: at least 0.95x raw's throughput."""
RSS_BUDGET = 1.6 * 1024**3
ROUNDS = 2
"""Turns each kind takes at every payload size (but 1 GB); the best of them is kept."""


@dataclass(frozen=True)
class Settings:
    """What to measure and where."""

    amqp_url: str
    management_url: str
    payload_mb: tuple[int, ...]
    fanout: tuple[int, ...]
    pings: int
    fanout_repeat: int
    turns: int

    @classmethod
    def from_env(cls, quick: bool = False) -> Settings:
        quick = quick or os.environ.get("BENCH_QUICK", "") not in ("", "0")
        payloads = "1,10,100" if quick else "1,10,100,1024"
        fanout = "1,10,100" if quick else "1,10,100,250,1000"
        return cls(
            amqp_url=os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
            management_url=os.environ.get(
                "BENCH_MANAGEMENT_URL", "http://guest:guest@127.0.0.1:15672"
            ),
            payload_mb=_ints(os.environ.get("BENCH_PAYLOAD_MB", payloads)),
            fanout=_ints(os.environ.get("BENCH_FANOUT", fanout)),
            pings=200 if quick else 300,
            fanout_repeat=10 if quick else 15,
            turns=3 if quick else 5,
        )


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


@contextmanager
def _vhost(settings: Settings) -> Iterator[str]:
    """A vhost of this run's own; yields its AMQP URL."""
    parts = urlsplit(settings.management_url)
    auth = (parts.username or "guest", parts.password or "guest")
    base = f"{parts.scheme}://{parts.hostname}:{parts.port or 15672}/api"
    name = f"bench-{uuid.uuid4().hex[:8]}"
    with httpx.Client(base_url=base, auth=auth, timeout=30) as client:
        client.put(f"/vhosts/{name}", json={}).raise_for_status()
        client.put(
            f"/permissions/{name}/{auth[0]}", json={"configure": ".*", "write": ".*", "read": ".*"}
        ).raise_for_status()
        try:
            yield settings.amqp_url.rstrip("/") + "/" + quote(name, safe="")
        finally:
            client.delete(f"/vhosts/{name}")


class Nodes:
    """A node-side process (``python -m bench.parties nodes``), stopped by closing stdin."""

    def __init__(
        self, kind: str, url: str, namespace: str, count: int, folder: Path, *extra: str,
        wait: bool = True,
    ) -> None:  # fmt: skip
        command = [
            sys.executable, "-m", "bench.parties", "nodes", "--kind", kind, "--url", url,
            "--namespace", namespace, "--count", str(count), "--dir", str(folder), *extra,
        ]  # fmt: skip
        self.kind = kind
        self.count = count
        self._started = time.perf_counter()
        self.process = subprocess.Popen(
            command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        """Wait until every node of the process consumes its queue; measure the process."""
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        if line != "ready":
            self.process.kill()
            self.process.wait()
            raise RuntimeError(f"{self.kind} nodes did not start: {line!r}")
        self.start_time = time.perf_counter() - self._started
        """Seconds from the start of the process until every node consumed its queue."""
        self.rss = _resident(self.process.pid)
        """Resident memory once ready, in bytes."""
        self.open_files = len(os.listdir(f"/proc/{self.process.pid}/fd"))
        """Descriptors open once ready."""

    def stop(self) -> dict[str, Any]:
        """Stop the nodes; return what they printed last (their peak RSS)."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.close()
        output = self.process.stdout.read()
        self.process.stdout.close()
        self.process.wait(timeout=120)
        result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
        return result


def _resident(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _idle_cpu(processes: list[Nodes], seconds: float = 5.0) -> float:
    """CPU seconds per second ``processes`` use while no request comes."""
    before = sum(process_cpu(side.process.pid) for side in processes)
    time.sleep(seconds)
    return (sum(process_cpu(side.process.pid) for side in processes) - before) / seconds


def process_cpu(pid: int) -> float:
    """User and system CPU seconds process ``pid`` has used so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def node_processes(
    kind: str, url: str, namespace: str, count: int, folder: Path, *, parallel: bool = False
) -> list[Nodes]:
    """``count`` nodes, at most :data:`NODES_PER_PROCESS` in each process, started one after
    the other (so each one's start-up time is its own) or all at once (``parallel``)."""
    started: list[Nodes] = []
    try:
        for first in range(0, count, NODES_PER_PROCESS):
            size = min(NODES_PER_PROCESS, count - first)
            started.append(Nodes(
                kind, url, namespace, size, folder, "--first", str(first), wait=not parallel
            ))  # fmt: skip
        if parallel:
            for process in started:
                process.wait_ready()
    except BaseException:
        for process in started:
            process.process.kill()
            process.process.wait()
            process.process.stdin.close()  # type: ignore[union-attr]
            process.process.stdout.close()  # type: ignore[union-attr]
        raise
    return started


def _researcher(kind: str, url: str, namespace: str, scenario: str, *extra: str) -> dict[str, Any]:
    command = [
        sys.executable, "-m", "bench.parties", "researcher", "--kind", kind, "--url", url,
        "--namespace", namespace, "--scenario", scenario, *extra,
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} researcher {scenario} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _latency_rows(url: str, settings: Settings, folder: Path) -> list[Row]:
    """Round trip and fan-out. Both kinds of nodes stay up while the researchers take turns,
    raw and ours back to back, ``settings.turns`` times (the order flips every turn). Each
    turn gives a ratio of two runs a few seconds apart; the figure is the median of those
    ratios, so a minute in which the shared machine is busier weighs on both sides alike."""
    most = max(settings.fanout, default=1)
    # The round trip goes to a process serving one node, the fan-out to one serving them all.
    namespaces = {
        (kind, count): f"{kind}{uuid.uuid4().hex[:6]}"
        for kind in ("raw", "ours")
        for count in (1, most)
    }
    serving = {
        key: node_processes(key[0], url, namespace, key[1], folder / namespace)
        for key, namespace in namespaces.items()
    }
    nodes = [process for processes in serving.values() for process in processes]
    turns: dict[tuple[str, str], list[dict[str, float]]] = {}

    def scenario(kind: str, name: str) -> dict[str, Any]:
        if name == "ping":
            count, repeat, warmup, namespace = 1, settings.pings, 50, namespaces[kind, 1]
            extra = []
        else:
            count, repeat, warmup = int(name.removeprefix("fanout")), settings.fanout_repeat, 2
            namespace, extra = namespaces[kind, most], ["--count", str(count)]
        node_side = serving[kind, 1 if name == "ping" else most]
        before = sum(process_cpu(side.process.pid) for side in node_side)
        started = time.perf_counter()
        result = _researcher(
            kind, url, namespace, "ping" if name == "ping" else name, *extra,
            "--repeat", str(repeat), "--warmup", str(warmup),
        )  # fmt: skip
        # The node side's CPU over the whole researcher run, warm-up included; the researcher
        # measures its own over the timed requests only.
        node_cpu = sum(process_cpu(side.process.pid) for side in node_side) - before
        # Less what the node processes spend idle (heartbeats, timers) over as long.
        node_cpu -= idle[kind, 1 if name == "ping" else most] * (time.perf_counter() - started)
        result["node_cpu_per_message"] = node_cpu / ((repeat + warmup) * count)
        result["cpu_per_message"] = result["cpu_per_op"] / count
        return result

    rows = _agent_rows(serving, most)
    # CPU seconds per second each group of node processes spends with no request to answer.
    idle = {key: _idle_cpu(processes) for key, processes in serving.items()}
    try:
        for turn in range(settings.turns):
            for name in ["ping", *(f"fanout{count}" for count in settings.fanout)]:
                order = ("raw", "ours") if turn % 2 == 0 else ("ours", "raw")
                for kind in order:
                    turns.setdefault((kind, name), []).append(scenario(kind, name))
    finally:
        for running in nodes:
            running.stop()

    def figure(label: str, name: str, key: str, target: float | None) -> Row:
        ours = [result[key] * 1000 for result in turns["ours", name]]
        raw = [result[key] * 1000 for result in turns["raw", name]]
        ratios = [mine / theirs for mine, theirs in zip(ours, raw, strict=True)]
        return row(
            label, statistics.median(ours), statistics.median(raw), "ms", target,
            ratio=statistics.median(ratios),
        )  # fmt: skip

    def cpu(label: str, name: str, key: str) -> Row:
        ours = [result[key] * 1e6 for result in turns["ours", name]]
        raw = [result[key] * 1e6 for result in turns["raw", name]]
        # Summed over the turns: CPU time comes in clock ticks (10 ms), so a turn's figure
        # for a fast scenario is coarse; the sums are not.
        return row(label, statistics.median(ours), statistics.median(raw), "us", TARGET_CPU,
                   ratio=sum(ours) / sum(raw))  # fmt: skip

    rows += [
        figure("round trip p50, 1 node", "ping", "p50", TARGET_ROUND_TRIP),
        figure("round trip p99, 1 node", "ping", "p99", None),
        cpu("CPU per ping, researcher", "ping", "cpu_per_message"),
        cpu("CPU per ping, node", "ping", "node_cpu_per_message"),
    ]
    for count in settings.fanout:
        target = TARGET_FANOUT if count in (100, 1000) else None
        rows.append(figure(f"fan-out and collect, {count} nodes", f"fanout{count}", "p50", target))
    for count in settings.fanout:
        if count > 1:
            name = f"fanout{count}"
            rows.append(cpu(f"CPU per reply, researcher, {count} nodes", name, "cpu_per_message"))
            rows.append(cpu(f"CPU per request, nodes, {count} nodes", name, "node_cpu_per_message"))
    return rows


def _agent_rows(serving: dict[tuple[str, int], list[Nodes]], most: int) -> list[Row]:
    """What each node agent costs its process: memory, start-up time and open files, from
    the process serving ``most`` nodes less the one serving a single node."""
    if most <= 1:
        return []

    def per_agent(kind: str, measure: Callable[[Nodes], float]) -> float:
        (single,) = serving[kind, 1]
        many = serving[kind, most]
        extra = sum(measure(side) for side in many) - len(many) * measure(single)
        return extra / (most - len(many))

    figures = [
        ("memory", "MB", lambda side: side.rss / MB),
        ("start-up", "ms", lambda side: side.start_time * 1000),
    ]
    processes = len(serving["ours", most])
    rows = [
        row(f"per node agent ({most} in {processes} processes), {name}",
            per_agent("ours", measure), per_agent("raw", measure), unit, None)
        for name, unit, measure in figures
    ]  # fmt: skip
    # The raw agents open no file of their own, so open files are weighed against the usual
    # limit of a process instead: the most any node process holds, with 250 agents.
    most_files = max(side.open_files for side in serving["ours", most])
    rows.append(row(
        f"open files of a node process ({most // processes} agents), against 1,024",
        most_files, FILE_LIMIT, "files", 1.0,
    ))  # fmt: skip
    ours_files, raw_files = per_agent("ours", open_files), per_agent("raw", open_files)
    rows.append(row(
        "open files per node agent (ratio against one file at least)", ours_files, raw_files,
        "files", None, ratio=ours_files / max(raw_files, 1.0),
    ))  # fmt: skip
    return rows


def open_files(side: Nodes) -> float:
    """Descriptors the node process holds once ready."""
    return float(side.open_files)


def _payload_rows(url: str, settings: Settings, folder: Path) -> list[Row]:
    """Echo of float32 parameters, one fresh pair of processes per size and kind."""
    rows: list[Row] = []
    for size_mb in settings.payload_mb:
        size = size_mb * MB
        repeat, warmup = (1, 0) if size_mb >= 1024 else (2, 1) if size_mb >= 100 else (5, 1)
        measured: dict[str, dict[str, Any]] = {}
        rounds = 1 if size_mb >= 1024 else ROUNDS
        for _ in range(rounds):
            for kind in ("raw", "ours"):
                namespace = f"{kind}{uuid.uuid4().hex[:6]}"
                nodes = Nodes(kind, url, namespace, 1, folder / namespace)
                try:
                    result = _researcher(
                        kind, url, namespace, f"echo{size_mb}", "--size", str(size),
                        "--repeat", str(repeat), "--warmup", str(warmup),
                    )  # fmt: skip
                finally:
                    node_rss = nodes.stop()["peak_rss"]
                result["node_rss"] = node_rss
                if kind not in measured or result["p50"] < measured[kind]["p50"]:
                    measured[kind] = result
        ours, raw = measured["ours"], measured["raw"]
        label = f"{size_mb} MB" if size_mb < 1024 else f"{size_mb // 1024} GB"
        moved = 2 * size / MB
        rows.append(
            row(f"echo {label} params, MB/s (higher is better)", moved / ours["p50"],
                moved / raw["p50"], "MB/s", None)
        )  # fmt: skip
        if size_mb >= 10:
            rows.append(
                row(f"echo {label} params, time", ours["p50"], raw["p50"], "s", TARGET_ECHO_TIME)
            )
        if size_mb >= 100:
            for side, key in (("researcher", "peak_rss"), ("node", "node_rss")):
                rows.append(
                    row(f"peak RSS {side}, {label}", ours[key] / MB, raw[key] / MB, "MB", None)
                )
                if size_mb >= 1024:
                    rows.append(
                        row(f"peak RSS {side}, {label}, against 1.6 GB", ours[key] / MB,
                            RSS_BUDGET / MB, "MB", 1.0)
                    )  # fmt: skip
    return rows


def _security_rows(url: str, settings: Settings, folder: Path) -> list[Row]:
    """The round trip with every envelope authenticated, against raw and against ours
    without security."""
    try:
        from broker_net.crypto.introductions import introduce
    except ImportError:
        return [row("round trip p50, security on (not available)", 1.0, 1.0, "ms", None)]
    pings = ["--repeat", str(settings.pings), "--warmup", "50"]

    def round_trip(kind: str, prefix: str, *, security: bool = False) -> dict[str, Any]:
        namespace = f"{prefix}{uuid.uuid4().hex[:6]}"
        node_args, researcher_args = [], []
        if security:
            researcher_dir = folder / namespace / "alice"
            introduce("alice", researcher_dir, {"node-000": folder / namespace / "node-000"})
            node_args, researcher_args = ["--security"], ["--security-dir", str(researcher_dir)]
        nodes = Nodes(kind, url, namespace, 1, folder / namespace, *node_args)
        try:
            return _researcher(kind, url, namespace, "ping", *pings, *researcher_args)
        finally:
            nodes.stop()

    signed = round_trip("ours", "sec", security=True)
    plain = round_trip("ours", "plain")
    raw = round_trip("raw", "raw")
    ms = 1000
    return [
        row("round trip p50, security on vs raw", signed["p50"] * ms, raw["p50"] * ms, "ms", None),
        row("round trip p50, security on vs off", signed["p50"] * ms, plain["p50"] * ms, "ms",
            None),
    ]  # fmt: skip


def run(quick: bool = False) -> list[Row]:
    """Measure every figure above; ratios are ours / raw (lower is better unless the name
    says otherwise)."""
    settings = Settings.from_env(quick)
    parts = {"latency": _latency_rows, "payloads": _payload_rows, "security": _security_rows}
    chosen = os.environ.get("BENCH_PARTS", ",".join(parts)).split(",")
    with tempfile.TemporaryDirectory(prefix="bench-") as folder, _vhost(settings) as url:
        base = Path(folder)
        return [item for name in chosen for item in parts[name.strip()](url, settings, base)]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.bench_network", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="no 1 GB, no 250 or 1,000 nodes")
    for item in run(parser.parse_args().quick):
        print(json.dumps(item))
