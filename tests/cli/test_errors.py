"""Every command of node-agent, researcher and broker-net-demo, in every way it can fail.

Each row runs the real console script: bad arguments, missing files, unknown ids, invalid
settings, an unreachable broker (a closed port), a wrong password, a wrong management URL or
password, a broker that dies mid-command (a proxy killed once the command is connected), a
node that answers with an error. Each must end with its exit code (2 usage or input, 1 failed
operation), exactly one line on stderr naming the problem (a JSON object with ``--json``),
and no traceback anywhere. The rows run side by side; each has its own researcher id and
folders.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from broker_net.crypto.identities import Identity
from researcher.orchestration.scheduler import stop_job
from researcher.orchestration.spec import JobSpec
from researcher.orchestration.store.job_store import JobStore
from tests.cli.world import Outcome, Row, World, run_row, write
from tests.researcher.orchestration.test_scheduler import analytics_job

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]

USAGE, FAILED = 2, 1
LOST = "lost the broker at amqp://***@127.0.0.1:"
UNREACHABLE = "cannot reach the broker at amqp://***@127.0.0.1:"
REFUSED = "refused the login (ACCESS_REFUSED)"
MGMT_DOWN = "cannot reach the RabbitMQ management API at http://127.0.0.1:"
MGMT_REFUSED = "management API at http://127.0.0.1:15672 refused user 'guest'"
CLOSED = {"BROKER_NET_RESEARCHER_AMQP_URL": "{closed_amqp}"}
BADPW = {"BROKER_NET_RESEARCHER_AMQP_URL": "{badpw_amqp}"}
NODE_CLOSED = {"BROKER_NET_NODE_AMQP_URL": "{closed_amqp}"}
NODE_BADPW = {"BROKER_NET_NODE_AMQP_URL": "{badpw_amqp}"}
MGMT_CLOSED = {"BROKER_NET_RESEARCHER_MANAGEMENT_URL": "{closed_mgmt}"}
MGMT_BADPW = {"BROKER_NET_RESEARCHER_MANAGEMENT_PASSWORD": "wrong"}


def unsafe_key(world: World, folder: Path) -> None:
    identity = folder / "node" / "identity"
    Identity.load_or_create(identity, "n-cli", "node")
    (identity / "identity.key").chmod(0o644)


def bad_node_trust(world: World, folder: Path) -> None:
    write(folder / "node" / "trusted-researchers" / "bad.pub", "not an identity line\n")


def canceled_job(world: World, folder: Path) -> dict[str, str]:
    """A job that ran nowhere: queued, then stopped; it may be rerun."""
    row_researcher = folder.name
    with JobStore(world.researcher_dir(row_researcher)) as store:
        job = store.create_job(JobSpec.load(world.root / "one.yaml"), researcher_id="x")
        stop_job(store, job.job_id)
    return {"job": job.job_id}


def bad_researcher_trust(world: World, folder: Path) -> None:
    write(world.researcher_dir(folder.name) / "trusted-nodes" / "bad.pub", "not a line\n")


ROWS = [
    # --- node-agent ----------------------------------------------------------------------------
    Row("node-agent start", "bad arguments", ("--nope",), USAGE, "no such option: --nope"),
    Row("node-agent start", "missing env file", ("--env-file", "{dir}/missing.env"), USAGE,
        "missing.env' does not exist"),
    Row("node-agent start", "no node id", (), USAGE, "BROKER_NET_NODE_NODE_ID is not set",
        env={"BROKER_NET_NODE_NODE_ID": None}),
    Row("node-agent start", "bad node id", ("--node-id", "bad id"), USAGE,
        "invalid BROKER_NET_NODE_NODE_ID (or --node-id): node id 'bad id'"),
    Row("node-agent start", "invalid amqp url", ("--amqp-url", "nowhere"), USAGE,
        "invalid BROKER_NET_NODE_AMQP_URL (or --amqp-url)"),
    Row("node-agent start", "broker unreachable", (), FAILED, UNREACHABLE, env=NODE_CLOSED),
    Row("node-agent start", "wrong password", (), FAILED, REFUSED, env=NODE_BADPW),
    Row("node-agent dataset add", "bad arguments", (), USAGE, "missing argument 'path'"),
    Row("node-agent dataset add", "missing file", ("{dir}/missing.csv",), USAGE,
        "missing.csv' does not exist"),
    Row("node-agent dataset add", "bad target", ("{root}/data.csv", "--target", "nope"), USAGE,
        "target column 'nope' is not among"),
    Row("node-agent dataset list", "bad arguments", ("--json", "--nope"), USAGE,
        "no such option: --nope", as_json=True),
    Row("node-agent dataset remove", "unknown id", ("dataset_nope",), USAGE,
        "no dataset with id 'dataset_nope'"),
    Row("node-agent plans list", "bad status", ("--status", "maybe"), USAGE, "unknown status"),
    Row("node-agent plans list", "bad status json", ("--status", "maybe", "--json"), USAGE,
        "unknown status 'maybe'", as_json=True),
    Row("node-agent plans show", "bad arguments", (), USAGE, "missing argument 'plan_id'"),
    Row("node-agent plans show", "unknown id", ("abcdef12",), USAGE,
        "no training plan has id 'abcdef12'"),
    Row("node-agent plans approve", "unknown id", ("abcdef12",), USAGE, "no training plan"),
    Row("node-agent plans reject", "unknown id", ("abcdef12",), USAGE, "no training plan"),
    Row("node-agent identity show", "bad node id", (), USAGE,
        "invalid BROKER_NET_NODE_NODE_ID", env={"BROKER_NET_NODE_NODE_ID": "a.b"}),
    Row("node-agent identity show", "unsafe key file", (), USAGE, "readable by other users",
        prepare=unsafe_key),
    Row("node-agent trust add", "missing file", ("{dir}/missing.pub",), USAGE,
        "cannot read"),
    Row("node-agent trust add", "not an identity", ('{{"party_id": 1}}',), USAGE,
        "not a valid public identity"),
    Row("node-agent trust list", "malformed trust file", (), USAGE, "bad.pub:1",
        prepare=bad_node_trust),
    # --- researcher status and ping ------------------------------------------------------------
    Row("researcher status", "bad arguments", ("--listen", "soon"), USAGE,
        "invalid value for '--listen'"),
    Row("researcher status", "invalid amqp url", (), USAGE,
        "invalid BROKER_NET_RESEARCHER_AMQP_URL", env={"BROKER_NET_RESEARCHER_AMQP_URL": "x"}),
    Row("researcher status", "broker unreachable", (), FAILED, UNREACHABLE, env=CLOSED),
    Row("researcher status", "wrong password", (), FAILED, REFUSED, env=BADPW),
    Row("researcher status", "management url closed", (), FAILED, MGMT_DOWN, env=MGMT_CLOSED),
    Row("researcher status", "management password", (), FAILED, MGMT_REFUSED, env=MGMT_BADPW),
    Row("researcher status", "management password json", ("--json",), FAILED, MGMT_REFUSED,
        env=MGMT_BADPW, as_json=True),
    Row("researcher status", "broker dies", ("--listen", "8"), FAILED, LOST, kill_after=1.0),
    Row("researcher ping", "bad arguments", ("--timeout", "soon"), USAGE,
        "invalid value for '--timeout'"),
    Row("researcher ping", "broker unreachable", ("n-ok",), FAILED, UNREACHABLE, env=CLOSED),
    Row("researcher ping", "wrong password", ("n-ok",), FAILED, REFUSED, env=BADPW),
    Row("researcher ping", "node answers an error", ("n-fail",), FAILED,
        "node n-fail ERROR: NODE_ERROR: this node is set up to fail"),
    Row("researcher ping", "node error json", ("n-fail", "--json"), FAILED, "NODE_ERROR",
        as_json=True),
    Row("researcher ping", "unsigned request", ("n-ok",), FAILED, "UNSIGNED_MESSAGE",
        env={"BROKER_NET_RESEARCHER_SECURITY": "false"}),
    Row("researcher ping", "unknown node", ("n-ghost", "--timeout", "2"), FAILED,
        "node n-ghost DISCONNECTED: the node has no request queue"),
    Row("researcher ping", "broker dies", ("n-slow", "--timeout", "20"), FAILED, LOST,
        kill_after=1.0),
    # --- researcher job ------------------------------------------------------------------------
    Row("researcher job submit", "bad arguments", (), USAGE, "missing argument 'SPEC'"),
    Row("researcher job submit", "missing file", ("{dir}/missing.yaml",), USAGE,
        "cannot read the job spec"),
    Row("researcher job submit", "bad spec", ("{root}/bad.yaml",), USAGE, "invalid job spec"),
    Row("researcher job submit", "broker unreachable", ("{root}/one.yaml",), FAILED,
        UNREACHABLE, env=CLOSED),
    Row("researcher job submit", "broker unreachable json", ("{root}/one.yaml", "--json"),
        FAILED, UNREACHABLE, env=CLOSED, as_json=True),
    Row("researcher job submit", "wrong password", ("{root}/one.yaml",), FAILED, REFUSED,
        env=BADPW),
    Row("researcher job submit", "broker dies", ("{root}/waits.yaml",), FAILED, LOST,
        kill_after=1.0),  # what becomes of the job: test_state.py
    Row("researcher job resume", "unknown id", ("job_nope",), USAGE, "no job has id 'job_nope'"),
    Row("researcher job rerun", "unknown id", ("job_nope",), USAGE, "no job has id 'job_nope'"),
    Row("researcher job rerun", "broker unreachable", ("{job}",), FAILED, UNREACHABLE,
        env=CLOSED, prepare=canceled_job),
    Row("researcher job stop", "unknown id", ("job_nope",), USAGE, "no job has id 'job_nope'"),
    Row("researcher job list", "bad arguments", ("--state", "nope"), USAGE,
        "invalid value for '--state'"),
    Row("researcher job list", "invalid setting", (), USAGE,
        "invalid BROKER_NET_RESEARCHER_DEFAULT_TIMEOUT",
        env={"BROKER_NET_RESEARCHER_DEFAULT_TIMEOUT": "soon"}),
    Row("researcher job status", "unknown id", ("job_nope",), USAGE, "no job has id 'job_nope'"),
    Row("researcher job status", "unknown id json", ("job_nope", "--json"), USAGE,
        "no job has id 'job_nope'", as_json=True),
    # --- researcher output ---------------------------------------------------------------------
    Row("researcher output metrics", "unknown id", ("job_nope",), USAGE, "no job has id"),
    Row("researcher output metrics", "unknown id json", ("job_nope", "--json"), USAGE,
        "no job has id 'job_nope'", as_json=True),
    Row("researcher output data", "unknown id", ("job_nope",), USAGE, "no job has id"),
    Row("researcher output model", "unknown id", ("job_nope", "--download", "{dir}"), USAGE,
        "no job has id"),
    Row("researcher output model", "bad arguments", ("job_nope",), USAGE,
        "missing option '--download'"),
    Row("researcher output plot", "unknown id", ("job_nope",), USAGE, "no job has id"),
    # --- researcher identity, trust, provision -------------------------------------------------
    Row("researcher identity show", "bad researcher id", (), USAGE,
        "invalid BROKER_NET_RESEARCHER_RESEARCHER_ID",
        env={"BROKER_NET_RESEARCHER_RESEARCHER_ID": "no/slash"}),
    Row("researcher trust add", "missing file", ("{dir}/missing.pub",), USAGE, "cannot read"),
    Row("researcher trust list", "malformed trust file", (), USAGE, "bad.pub:1",
        prepare=bad_researcher_trust),
    Row("researcher provision", "bad arguments", (), USAGE, "missing option '--node'"),
    Row("researcher provision", "management url closed", ("--node", "n1"), FAILED, MGMT_DOWN,
        env=MGMT_CLOSED),
    Row("researcher provision", "management password", ("--node", "n1"), FAILED, MGMT_REFUSED,
        env=MGMT_BADPW),
    Row("researcher provision", "passwords folder missing",
        ("--node", "n1", "--passwords-file", "{dir}/no/such/users.env"), USAGE,
        "no such file or directory"),
    # --- broker-net-demo -----------------------------------------------------------------------
    Row("broker-net-demo run", "bad arguments", ("--rounds", "many"), USAGE,
        "invalid value for '--rounds'"),
    Row("broker-net-demo run", "missing node data", ("--external-nodes", "a,b"), USAGE,
        "--external-nodes needs --node-data-root"),
    Row("broker-net-demo run", "broker unreachable", ("--amqp-url", "{closed_amqp}"), FAILED,
        UNREACHABLE),
    Row("broker-net-demo run", "wrong password", ("--amqp-url", "{badpw_amqp}"), FAILED,
        REFUSED),
    Row("broker-net-demo setup-node", "bad arguments", (), USAGE, "missing option '--shard'"),
    Row("broker-net-demo setup-node", "no such shard", ("--shard", "5"), USAGE,
        "there is no shard 5 of 3; use --shard 0 to 2"),
    Row("broker-net-demo setup-node", "data dir is a file",
        ("--shard", "0", "--data-dir", "{root}/data.csv"), USAGE, "data.csv"),
]  # fmt: skip


@pytest.fixture(scope="module")
def world(
    amqp_url: str, rabbitmq_vhost: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    root = tmp_path_factory.mktemp("cli")
    namespace = f"cli{uuid.uuid4().hex[:8]}"
    researchers = sorted({row.researcher for row in ROWS})
    world = World(root, rabbitmq_vhost, amqp_url, namespace, researchers)
    analytics_job("one", node_wait=5).export(root)
    analytics_job("waits", node_wait=60, mandatory_nodes=["n-ghost"]).export(root)
    write(root / "bad.yaml", "name: bad\n")
    write(root / "data.csv", "age,label\n30,1\n40,0\n")
    try:
        world.start()
        yield world
    finally:
        world.stop()


@pytest.fixture(scope="module")
def outcomes(world: World) -> Iterator[dict[str, Future[Outcome]]]:
    """Every row, started at once on a few workers; each test waits for its own."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        yield {row.id: pool.submit(run_row, world, row) for row in ROWS}


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_every_failure_is_one_line(row: Row, outcomes: dict[str, Future[Outcome]]) -> None:
    outcome = outcomes[row.id].result()
    shown = f"exit {outcome.code}\nstdout: {outcome.stdout}\nstderr: {outcome.stderr}"
    assert "Traceback" not in outcome.stdout + outcome.stderr, shown
    lines = [line for line in outcome.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, shown
    assert outcome.code == row.code, shown
    if row.as_json:
        error = json.loads(lines[0])
        assert error["code"] == row.code, shown
        assert row.phrase in error["error"], shown
        assert outcome.stdout == "" or json.loads(outcome.stdout) is not None
    else:
        assert lines[0].startswith("error: "), shown
        assert row.phrase in lines[0], shown
    assert "guest:guest@" not in outcome.stderr and "wrong@" not in outcome.stderr, shown
