"""What a command leaves behind: no job a failed submit stored, no queue a ping or a status
declared; and what it shows: signed pings, tables that fit 80 columns."""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import anyio
import httpx
import pytest
from pydantic import ValidationError
from rich.console import Console

from broker_net.cli_errors import CliError, explain, first_error, one_line, validation_summary
from broker_net.errors import ConnectionLostError
from broker_net.memory import MemoryBroker, MemoryTransport
from researcher.cli.main import _status_table
from researcher.cli.status import NodeStatus
from researcher.errors import NodesMissingError
from researcher.orchestration.model_specs import ModelRef
from researcher.orchestration.spec import JobSpec
from researcher.orchestration.store.job_store import JobStore
from researcher.requests.router import Requests
from simulation.demo_setup import register_demo_shard
from tests.cli.proxy import Proxy
from tests.cli.world import AGENTS, BIN, World, closed_port
from tests.conftest import ADMIN, AMQP_HOST, AMQP_PORT, MANAGEMENT_URL
from tests.researcher.orchestration.test_scheduler import analytics_job

RESEARCHER = "alice"


@pytest.fixture
def world(amqp_url: str, rabbitmq_vhost: str, tmp_path: Path) -> Iterator[World]:
    """The node agents of the command table, each with a shard of the demo data, trusting
    alice (and trusted by her), in a namespace of their own."""
    namespace = f"st{uuid.uuid4().hex[:8]}"
    world = World(tmp_path, rabbitmq_vhost, amqp_url, namespace, [RESEARCHER])
    for index, node in enumerate(AGENTS):
        register_demo_shard(tmp_path / "nodes" / node, index, len(AGENTS))
    try:
        world.start()
        yield world
    finally:
        world.stop()


def researcher(
    world: World, *args: str, amqp_url: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = world.environment(RESEARCHER, world.root, amqp_url or world.amqp_url)
    return subprocess.run(
        [str(BIN / "researcher"), *args], env=env, cwd=world.root, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip


def jobs(world: World) -> list[tuple[str, str, str]]:
    listed = researcher(world, "job", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    return [(job["job_id"], job["name"], job["state"]) for job in json.loads(listed.stdout)]


def submitted(result: subprocess.CompletedProcess[str]) -> str:
    found = re.search(r"job (job_[0-9a-f]+) submitted", result.stdout)
    assert found, result.stdout + result.stderr
    return found.group(1)


def queues(world: World) -> list[str]:
    with httpx.Client(base_url=MANAGEMENT_URL + "/api", auth=ADMIN, timeout=10) as api:
        found = api.get(f"/queues/{quote(world.vhost, safe='')}").json()
    return sorted(q["name"] for q in found if q["name"].startswith(f"{world.namespace}."))


@pytest.mark.rabbitmq
@pytest.mark.slow
def test_a_failed_submit_leaves_nothing_a_later_submit_runs(world: World) -> None:
    one = analytics_job("one", node_wait=10).export(world.root)
    waits = analytics_job("waits", node_wait=60, mandatory_nodes=["n-ghost"]).export(world.root)

    dead = f"amqp://guest:guest@127.0.0.1:{closed_port()}/{quote(world.vhost, safe='')}"
    unreachable = researcher(world, "job", "submit", str(one), amqp_url=dead)
    assert unreachable.returncode == 1 and "cannot reach the broker" in unreachable.stderr
    assert jobs(world) == []

    proxy = Proxy((AMQP_HOST, AMQP_PORT))
    via_proxy = world.amqp_url.replace(f"{AMQP_HOST}:{AMQP_PORT}", f"127.0.0.1:{proxy.port}")
    env = world.environment(RESEARCHER, world.root, via_proxy)
    process = subprocess.Popen(
        [str(BIN / "researcher"), "job", "submit", str(waits)], env=env, cwd=world.root,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proxy.connected.wait(30)
    time.sleep(1.0)
    proxy.kill()
    out, err = process.communicate(timeout=60)
    lost = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    assert lost.returncode == 1 and "lost the broker" in err, out + err
    stranded = submitted(lost)
    assert jobs(world) == [(stranded, "waits", "failed")]

    ran = researcher(world, "job", "submit", str(one))
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert ran.stderr == ""
    fresh = submitted(ran)
    assert jobs(world) == [(fresh, "one", "success"), (stranded, "waits", "failed")]


@pytest.mark.rabbitmq
@pytest.mark.slow
def test_ping_is_signed_and_ping_and_status_leave_no_queue(world: World) -> None:
    before = queues(world)
    assert before == [f"{world.namespace}.node.{node}.requests" for node in sorted(AGENTS)]

    ping = researcher(world, "ping", "n-ok", "n-fail", "--json")
    assert ping.returncode == 1, ping.stderr
    answers = json.loads(ping.stdout)
    assert answers["n-ok"]["status"] == "SUCCESS" and answers["n-ok"]["error_code"] is None
    assert answers["n-fail"]["error_code"] == "NODE_ERROR"
    assert json.loads(ping.stderr) == {
        "error": "node n-fail ERROR: NODE_ERROR: this node is set up to fail",
        "code": 1,
    }

    status = researcher(world, "status", "--listen", "2.5")
    assert "n-ok" in status.stdout, status.stdout + status.stderr
    lines = status.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines) and "…" not in status.stdout
    (row,) = [line for line in lines if "n-ok" in line]
    assert row.split()[:2] == ["n-ok", "yes"]
    assert queues(world) == before


def test_the_status_table_fits_80_columns() -> None:
    nodes = [
        NodeStatus("hospital-a", True, None, 0.3, "0.1.0", "q", 0, 1, 2, 0.2, 10.5, 0.2),
        NodeStatus("hospital-b", False, None, None, "", "q", 3, 0, 0, 0.0, 0.0, 0.0),
        NodeStatus("a-rather-long-node-identifier-7", True, None, 1.0, "0.1.0", "q",
                   0, 1, 0, 0.0, 0.0, 0.0),
    ]  # fmt: skip
    console = Console(width=80, record=True)
    console.print(_status_table("broker_net", nodes))
    text = console.export_text()
    assert all(len(line) <= 80 for line in text.splitlines())
    for word in ("node", "online", "beat", "version", "queued", "unacked", "consumers",
                 "pub/dlv/ack", "hospital-a", "hospital-b", "DOWN", "0.2/10.5/0.2"):  # fmt: skip
        assert word in text
    assert "…" not in text


def test_the_job_list_fits_80_columns(tmp_path: Path) -> None:
    spec = analytics_job("a-job-with-a-fairly-long-name").export(tmp_path)
    with JobStore(tmp_path / "researcher") as store:
        job = store.create_job(JobSpec.load(spec), researcher_id="alice", reason="queued: " * 8)
    env = {"BROKER_NET_RESEARCHER_DATA_DIR": str(tmp_path / "researcher"), "COLUMNS": "80"}
    listed = subprocess.run(
        [str(BIN / "researcher"), "job", "list"], env={**env, "PATH": str(BIN)},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert all(len(line) <= 80 for line in listed.stdout.splitlines())
    assert job.job_id in listed.stdout and "waiting" in listed.stdout
    assert "a-job-with-a-fairly-long-name" in listed.stdout and "…" not in listed.stdout


@pytest.mark.anyio
async def test_waiting_for_absent_nodes_names_them() -> None:
    async with MemoryTransport(MemoryBroker()) as transport, Requests(transport, "r") as requests:
        started = time.monotonic()
        with pytest.raises(NodesMissingError) as raised:
            await requests.wait_for_nodes(["ghost", "phantom"], timeout=0.3)
    assert time.monotonic() - started < 2
    assert isinstance(raised.value, TimeoutError)
    assert raised.value.missing == ["ghost", "phantom"]
    assert "ghost, phantom" in str(raised.value)


class _LosesPresence(MemoryTransport):
    """A broker that goes as the presence consumer starts."""

    def consume(self, queue, **options):  # type: ignore[no-untyped-def]
        if queue.name.endswith(".presence"):
            raise ConnectionLostError("the broker went")
        return super().consume(queue, **options)


@pytest.mark.anyio
async def test_a_consumer_that_cannot_start_leaves_no_task_group_open() -> None:
    # A task group left open by Requests.__aenter__ broke every scope around it: "exit a
    # cancel scope that isn't the current task's" instead of the broker's error.
    async with _LosesPresence(MemoryBroker()) as transport:
        with pytest.raises(ExceptionGroup) as raised:
            async with anyio.create_task_group(), Requests(transport, "r"):
                pass
    assert isinstance(first_error(raised.value), ConnectionLostError)


def test_errors_are_unwrapped_and_passwords_masked() -> None:
    lost = ConnectionLostError("gone from amqp://bob:secret@rmq:5672/")
    group = ExceptionGroup("tasks", [ExceptionGroup("inner", [lost]), ValueError("later")])
    assert first_error(group) is lost
    assert explain(group).message == "broker error: gone from amqp://***@rmq:5672/"
    named = CliError("what to do", 2)
    assert first_error(ExceptionGroup("tasks", [lost, named])) is named
    assert one_line("a\n  b  c") == "a b c"


def test_a_unions_branch_errors_are_one_problem_at_the_users_place() -> None:
    document = {"model": "worst", "colour": "red"}
    with pytest.raises(ValidationError) as raised:
        ModelRef.model_validate(document)
    wanted = "model: must be 'final', 'best' or a whole number (got 'worst') (and 1 more problem)"
    assert validation_summary(raised.value) == wanted  # branch names left out by their look
    assert validation_summary(raised.value, document) == wanted
