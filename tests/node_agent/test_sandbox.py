"""Approved but hostile training plans, through the real runner path: each ends in PLAN_FAILED or
PLAN_TIMEOUT with a reason, finds nothing of the node, and leaves nothing behind.

What needs an agent running as root (a plan user, namespaces) is skipped elsewhere; the limits,
the environment and the capped output are tested in every case.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

from broker_net.amqp import AmqpTransport
from broker_net.codes import ErrorCode
from broker_net.crypto.identities import Identity
from broker_net.messages import TrainRequest
from broker_net.topology import Topology
from node_agent import plan_workers
from node_agent.agent import NodeAgent
from node_agent.datasets import DatasetRegistry, Table
from node_agent.plans import PlanRegistry
from node_agent.runner import PlanFailedError, PlanTimeoutError, run_training
from node_agent.sandbox import Isolation, SandboxPolicy, detect_isolation
from node_agent.settings import NodeSettings
from researcher import DiscardOnTimeout, RequestStatus
from researcher.requests import Requests
from tests.node_agent.sandbox_support import (
    PLAN_UID,
    SETTINGS,
    RssPeak,
    assert_no_process_left,
    breast_cancer_table,
    needs_isolation,
    plan,
    policy,
    processes_with,
)

pytestmark = pytest.mark.anyio
SECRET = "s3cret-" + uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def table() -> Table:
    return breast_cancer_table()


async def run(source: str, table: Table, sandbox: SandboxPolicy, *, timeout: float = 30.0):
    return await run_training(
        source,
        "P",
        table=table,
        target="y",
        params={},
        training_args={"epochs": 1},
        model_args={},
        timeout=timeout,
        sandbox=sandbox,
    )


async def failure(source: str, table: Table, sandbox: SandboxPolicy) -> PlanFailedError:
    with pytest.raises(PlanFailedError) as caught:
        await run(source, table, sandbox)
    return caught.value


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def exists(path: str) -> bool:
    return os.path.exists(path)


def left_behind(name: str) -> list[Path]:
    """Files called ``name`` in the shared temporary folders or a plan's folder."""
    found = [Path(folder, name) for folder in ("/tmp", "/var/tmp", "/dev/shm")]
    found += Path(tempfile.gettempdir()).glob(f"broker-net-plan-*/{name}")
    return [path for path in found if path.exists()]


@pytest.fixture
def node_dir() -> Iterator[Path]:
    """A node data folder with an identity, world-readable as a careless operator left it.

    It is not under /tmp (a sandboxed plan has a /tmp of its own) so a plan could reach it,
    were the sandbox not to close it.
    """
    base = Path("/run") if os.access("/run", os.W_OK) else Path.home()
    folder = Path(tempfile.mkdtemp(prefix="broker-net-test-node-", dir=base))
    try:
        Identity.load_or_create(folder / "identity", "hospital-a", "node")
        (folder / "identity").chmod(0o755)
        (folder / "identity" / "identity.key").chmod(0o644)
        folder.chmod(0o755)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@needs_isolation
async def test_the_environment_and_other_processes_hold_no_secret(table, monkeypatch):
    monkeypatch.setenv("BROKER_NET_NODE_AMQP_URL", f"amqp://hospital:{SECRET}@127.0.0.1/")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    source = plan(
        f"""
        def train(self, x, y, args):
            import glob, json, os
            found = [k for k, v in os.environ.items() if {SECRET!r} in v]
            readable = 0
            for path in glob.glob("/proc/*/environ") + glob.glob("/proc/*/cmdline"):
                try:
                    data = open(path, "rb").read()
                except OSError:
                    continue
                readable += 1
                if {SECRET!r}.encode() in data:
                    found.append(path)
            print(json.dumps({{"env": sorted(os.environ), "found": found}}))
            raise RuntimeError(f"found {{len(found)}} secrets in {{readable}} files")
        """
    )
    error = await failure(source, table, policy())

    assert "found 0 secrets" in str(error)
    report = json.loads(error.output.strip().splitlines()[-1])
    assert report["found"] == []
    allowed = {"PATH", "LANG", "LC_ALL", "HOME", "TMPDIR", "PYTHONPATH", "PYTHONHOME"}
    assert {
        name
        for name in report["env"]
        if name not in allowed and not name.startswith(("PYTHON", "OPENBLAS_", "OMP_", "MKL_"))
    } == set()
    assert not any(name.startswith("BROKER_NET") for name in report["env"])
    assert_no_process_left()


@needs_isolation
async def test_the_identity_key_is_out_of_reach(table, node_dir: Path):
    key = node_dir / "identity" / "identity.key"
    source = plan(
        f"""
        def train(self, x, y, args):
            open({str(key)!r}, "rb").read()
        """
    )
    error = await failure(source, table, policy(protected=(node_dir,)))

    assert error.stage == "train" and error.error_type == "PermissionError"
    assert mode(key) == 0o600
    assert mode(node_dir / "identity") == 0o700
    assert mode(node_dir) & 0o007 == 0
    assert_no_process_left()


@needs_isolation
async def test_there_is_no_network(table):
    with socket.socket() as probe:  # the broker answers the agent...
        probe.settimeout(2)
        broker_up = probe.connect_ex(("127.0.0.1", 5672)) == 0
    source = plan(
        """
        def train(self, x, y, args):
            import socket
            errors = []
            for port in (5672, 15672):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=2).close()
                except OSError as exc:
                    errors.append(exc.strerror or type(exc).__name__)
                else:
                    errors.append("connected")
            raise OSError(f"connections: {errors}")
        """
    )
    error = await failure(source, table, policy())

    assert "connected" not in str(error), "...but not the plan"
    assert "unreachable" in str(error)
    assert broker_up or "the broker is down: this shows only that the plan had no network"
    assert_no_process_left()


async def test_allocating_8_gb_fails(table):
    source = plan(
        """
        def train(self, x, y, args):
            import numpy as np
            np.ones(10**9)  # 8 GB
        """
    )
    error = await failure(source, table, policy())
    assert (error.stage, error.error_type) == ("train", "MemoryError")


@needs_isolation
async def test_a_fork_bomb_is_bounded_and_none_of_it_outlives_the_plan(table):
    marker = f"{time.time() % 100000 + 100000:.6f}"  # a sleep duration no one else uses
    source = plan(
        f"""
        def train(self, x, y, args):
            import os
            children = 0
            while True:
                try:
                    pid = os.fork()
                except OSError as exc:
                    raise RuntimeError(f"forked {{children}} children, then {{exc.strerror}}")
                if pid == 0:
                    try:
                        os.setsid()  # out of the process group, as a daemon would
                        os.execv("/bin/sleep", ["sleep", {marker!r}])
                    finally:
                        os._exit(1)
                children += 1
        """
    )
    error = await failure(source, table, policy())

    assert error.error_type == "RuntimeError"
    forked = int(str(error).split("forked ")[1].split()[0])
    assert 0 < forked < policy().max_processes
    assert_no_process_left()
    assert processes_with(marker) == []


async def test_a_huge_file_is_cut_at_the_file_size_limit_and_removed(table):
    marker = uuid.uuid4().hex
    source = plan(
        f"""
        def train(self, x, y, args):
            import os
            for folder in ("/tmp", "/var/tmp", "/dev/shm", "."):
                try:
                    open(os.path.join(folder, {marker!r}), "w").write("left behind")
                except OSError:
                    pass
            chunk = b"x" * 2**20
            with open("huge.bin", "wb") as out:
                while True:
                    out.write(chunk)
        """
    )
    error = await failure(source, table, policy())

    assert error.error_type == "OSError" and "File too large" in str(error)
    left = left_behind(marker)
    if not detect_isolation(policy()).namespaces:  # the shared folders are the host's
        for path in left:
            path.unlink()
        left = [path for path in left if path.parent.name.startswith("broker-net-plan-")]
    assert left == []
    assert_no_process_left()


async def test_an_endless_loop_is_stopped_at_its_deadline(table):
    source = plan(
        """
        def train(self, x, y, args):
            while True:
                pass
        """
    )
    started = time.monotonic()
    with pytest.raises(PlanTimeoutError, match="longer than 5 s"):
        await run(source, table, policy(), timeout=5.0)
    assert time.monotonic() - started < 15
    assert_no_process_left()


async def test_printing_1_gb_keeps_only_head_and_tail_in_the_agent(table):
    await run(plan("pass"), table, policy())  # the first run's imports and threads
    source = plan(
        """
        def train(self, x, y, args):
            import sys
            line = "x" * 1023 + "\\n"
            block = line * 1024
            sys.stdout.write("first line\\n")
            for _ in range(1024):
                sys.stdout.write(block)  # 1 MiB
            sys.stdout.write("last line\\n")
            raise RuntimeError("printed 1 GiB")
        """
    )
    with RssPeak() as memory:
        error = await failure(source, table, policy())

    assert "printed 1 GiB" in str(error)
    assert len(error.output) <= policy().output_limit + 100
    assert error.output.startswith("first line") and error.output.endswith("last line\n")
    assert "bytes of output left out" in error.output
    print(f"agent RSS growth while the plan printed 1 GiB: {memory.growth / 2**20:.1f} MiB")
    assert memory.growth < 8 * 2**20
    assert_no_process_left()


async def test_a_result_over_the_size_limit_is_refused_unread(table):
    source = plan(
        """
        def get_params(self):
            import numpy as np
            return {"w": np.zeros(2**20)}  # 8 MiB
        """
    )
    error = await failure(source, table, policy(max_result_size=2**20))
    assert error.stage == "process" and "over the limit" in str(error)


@needs_isolation
def test_isolation_as_root_uses_the_plan_user_and_namespaces() -> None:
    isolation = detect_isolation(policy())
    assert (isolation.uid, isolation.namespaces, isolation.user_namespace) == (
        PLAN_UID,
        True,
        False,
    )
    assert isolation.missing == ()


@needs_isolation
@pytest.mark.rabbitmq
async def test_a_node_agent_answers_pings_while_a_plan_misbehaves(
    amqp_url: str, topology: Topology, tmp_path: Path
):
    """Over RabbitMQ: a plan that forks, prints and never ends; the agent keeps answering."""
    data_dir = tmp_path / "node"
    x, y = breast_cancer_table(100).values[:, :-1], breast_cancer_table(100).values[:, -1]
    np.savez(tmp_path / "shard.npz", X=x, y=y)
    marker = f"{time.time() % 100000 + 200000:.6f}"
    source = plan(
        f"""
        def train(self, x, y, args):
            import os, sys, time
            for _ in range(5):
                if os.fork() == 0:
                    os.setsid()
                    os.execv("/bin/sleep", ["sleep", {marker!r}])
            line = "noise " * 170 + "\\n"
            while True:
                sys.stdout.write(line * 64)
        """
    )
    with DatasetRegistry(data_dir) as datasets:
        dataset_id = datasets.add(tmp_path / "shard.npz").dataset_id
    with PlanRegistry(data_dir) as plans:
        plans.approve(plans.register(source).plan_id)
    settings = NodeSettings(
        node_id="n1", data_dir=data_dir, amqp_url=amqp_url, namespace=topology.namespace,
        security=False, plan_timeout=6.0, heartbeat_interval=0.5, **SETTINGS,
    )  # fmt: skip
    request = TrainRequest(
        researcher_id="alice", experiment_id="e", round=0, training_plan=source,
        training_plan_class="P", dataset_id=dataset_id, training_args={"epochs": 1},
    )  # fmt: skip
    pings: list[float] = []
    async with (
        AmqpTransport(amqp_url, connection_name="sandboxed-agent") as agent_transport,
        NodeAgent(settings, agent_transport, shutdown_grace=1) as agent,
        AmqpTransport(amqp_url, connection_name="alice") as transport,
        Requests(transport, "alice", topology=topology) as researcher,
    ):
        await agent.wait_ready()
        await researcher.ping(["n1"], timeout=5)  # connections warm
        done: list[Any] = []

        async def train() -> None:
            done.append(await researcher.request(request, ["n1"], [DiscardOnTimeout(30)]))

        with RssPeak() as memory:
            async with anyio.create_task_group() as group:
                group.start_soon(train)
                while not done:
                    started = time.monotonic()
                    ping = await researcher.ping(["n1"], timeout=5)
                    assert ping.status() == {"n1": RequestStatus.SUCCESS}
                    pings.append(time.monotonic() - started)
                    await anyio.sleep(0.2)
        error = done[0].errors()["n1"]

    assert error.code is ErrorCode.PLAN_TIMEOUT, error
    assert "longer than 6 s" in error.message
    assert len(pings) >= 10 and max(pings) < 1.0, pings
    print(
        f"pings during the plan: {len(pings)}, slowest {max(pings):.3f} s; agent RSS growth "
        f"{memory.growth / 2**20:.1f} MiB"
    )
    assert memory.growth < 16 * 2**20
    assert_no_process_left()
    assert processes_with(marker) == []


@needs_isolation
async def test_the_user_namespace_of_an_agent_that_is_not_root(table, monkeypatch):
    """What a non-root agent gets where user namespaces work (forced here, as root): no
    network, a private /tmp, no capabilities; the plan keeps the agent's user."""
    isolation = Isolation(unshare=shutil.which("unshare"), user_namespace=True)
    monkeypatch.setattr(plan_workers, "detect_isolation", lambda policy: isolation)
    marker = uuid.uuid4().hex
    source = plan(
        f"""
        def train(self, x, y, args):
            import socket
            open("/tmp/{marker}", "w").close()
            status = dict(line.split(":", 1) for line in open("/proc/self/status"))
            caps = status["CapEff"].strip() + "/" + status["CapBnd"].strip()
            try:
                socket.create_connection(("127.0.0.1", 5672), timeout=2)
            except OSError as exc:
                raise OSError(f"caps {{caps}}; {{exc.strerror}}") from None
        """
    )
    error = await failure(source, table, policy())

    assert "caps 0000000000000000/0000000000000000" in str(error)
    assert "unreachable" in str(error)
    assert left_behind(marker) == []


@needs_isolation
async def test_a_root_agent_without_namespaces_still_switches_user_and_cleans_up(
    table, monkeypatch
):
    """Where unshare cannot make namespaces (a container without CAP_SYS_ADMIN): the plan
    runs as the plan user in a folder of its own, and its processes are killed by ancestry."""
    isolation = Isolation(uid=PLAN_UID, gid=PLAN_UID)
    monkeypatch.setattr(plan_workers, "detect_isolation", lambda policy: isolation)
    marker = f"{time.time() % 100000 + 300000:.6f}"
    source = plan(
        f"""
        def train(self, x, y, args):
            import os
            if os.fork() == 0:
                os.setsid()
                os.execv("/bin/sleep", ["sleep", {marker!r}])
            raise RuntimeError(f"uid {{os.getuid()}} in {{os.getcwd()}}")
        """
    )
    error = await failure(source, table, policy())

    assert f"uid {PLAN_UID} in {tempfile.gettempdir()}/broker-net-plan-" in str(error)
    folder = str(error).split(" in ")[-1]
    assert_no_process_left()
    assert processes_with(marker) == []
    assert not exists(folder)
