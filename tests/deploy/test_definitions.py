"""deploy/rabbitmq/definitions.json: in step with topology.py, and provisioned on a real broker.

The broker tests run deploy/rabbitmq/provision.sh, as the compose ``provision`` service does,
into a throwaway vhost with users of their own (users are broker-wide), then check what the
broker holds and that each user can do its part and no more.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from broker_net.admin.provisioning import (
    NOTHING,
    Permissions,
    node_permissions,
    researcher_permissions,
)
from broker_net.amqp import AmqpTransport
from broker_net.errors import BrokerAccessError
from broker_net.topology import Topology
from broker_net.transport import OutgoingMessage
from researcher.requests.policies import RequestStatus
from researcher.requests.router import Requests
from tests.conftest import ADMIN, AMQP_HOST, AMQP_PORT, MANAGEMENT_URL
from tests.deploy.compose import (
    DEFINITIONS_FILE,
    ROOT,
    command,
    environment,
    load_compose,
    localize_definitions,
    password_variable,
)

NODES = tuple(
    name
    for name, service in load_compose()["services"].items()
    if "BROKER_NET_NODE_NODE_ID" in environment(service)
)
# The researcher ids the compose `researcher` user works under: its own, `researcher status`'s
# and the demo's.
RESEARCHER_IDS = ("researcher",)  # its helper ids (researcher-status) are covered
RESEARCHER_CLI = str(Path(sys.executable).with_name("researcher"))
TOPOLOGY = Topology()
RIGHTS = ("configure", "write", "read")


def definitions() -> dict[str, Any]:
    return dict(json.loads(DEFINITIONS_FILE.read_text()))


def permission(user: str) -> dict[str, str]:
    (found,) = [p for p in definitions()["permissions"] if p["user"] == user]
    return dict(found)


def allowed(regex: str, name: str) -> bool:
    return re.search(regex, name) is not None


def test_definitions_declare_what_the_agents_and_researchers_declare() -> None:
    document = definitions()
    exchanges = {e["name"]: e["type"] for e in document["exchanges"]}
    specs = [
        TOPOLOGY.requests_exchange, TOPOLOGY.replies_exchange,
        TOPOLOGY.presence_exchange, TOPOLOGY.dead_letter_exchange,
    ]  # fmt: skip
    assert exchanges == {spec.name: spec.kind for spec in specs}
    assert all(e["durable"] and not e["auto_delete"] for e in document["exchanges"])
    # A queue declared with other arguments than the agent's would make the agent fail
    # with PRECONDITION_FAILED.
    queues = {q["name"]: q for q in document["queues"]}
    expected = [TOPOLOGY.dead_letter_queue, *(TOPOLOGY.node_queue(node) for node in NODES)]
    assert set(queues) == {spec.name for spec in expected}
    for spec in expected:
        queue = queues[spec.name]
        assert queue["arguments"] == spec.arguments, spec.name
        assert (queue["durable"], queue["auto_delete"]) == (spec.durable, spec.auto_delete)
    bindings = {(b["source"], b["destination"], b["routing_key"]) for b in document["bindings"]}
    assert bindings == {(ex, spec.name, key) for spec in expected for ex, key in spec.bindings}


def test_policies_cover_node_queues_and_the_dead_letter_queue() -> None:
    policies = {p["name"]: p for p in definitions()["policies"]}
    node_policy = policies["broker_net-node-requests"]
    for node in NODES:
        assert allowed(node_policy["pattern"], TOPOLOGY.node_queue(node).name)
    for other in (TOPOLOGY.dead_letter_queue.name, TOPOLOGY.researcher_queue("r").name):
        assert not allowed(node_policy["pattern"], other)
    rules = node_policy["definition"]
    assert rules["dead-letter-exchange"] == TOPOLOGY.dead_letter_exchange.name
    assert rules["message-ttl"] > 0 and rules["max-length"] > 0
    assert rules["overflow"] == "reject-publish-dlx"
    dead_letter = policies["broker_net-dead-letter"]
    assert allowed(dead_letter["pattern"], TOPOLOGY.dead_letter_queue.name)
    assert "dead-letter-exchange" not in dead_letter["definition"]


def _union(patterns: list[str]) -> str:
    alternatives: list[str] = []
    for pattern in patterns:
        for alternative in pattern.split("|"):
            if alternative not in alternatives:
                alternatives.append(alternative)
    if len(alternatives) > 1 and NOTHING in alternatives:
        alternatives.remove(NOTHING)
    return "|".join(alternatives)


def expected_access() -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """The permissions and topic permissions broker_net/admin/provisioning.py grants each user."""
    grants: list[tuple[str, list[Permissions]]] = [
        ("researcher", [researcher_permissions(TOPOLOGY, r) for r in RESEARCHER_IDS]),
        *((node, [node_permissions(TOPOLOGY, node)]) for node in NODES),
    ]
    permissions, topics = [], []
    for user, granted in grants:
        permissions.append({
            "user": user, "vhost": "broker-net",
            **{right: _union([getattr(g, right) for g in granted]) for right in RIGHTS},
        })  # fmt: skip
        for exchange in granted[0].topics:
            write, read = zip(*(g.topics[exchange] for g in granted), strict=True)
            topics.append({
                "user": user, "vhost": "broker-net", "exchange": exchange,
                "write": _union(list(write)), "read": _union(list(read)),
            })  # fmt: skip
    return permissions, topics


def test_users_get_what_broker_net_provisioning_grants() -> None:
    permissions, topics = expected_access()
    document = definitions()
    assert document["permissions"] == permissions, json.dumps(permissions, indent=2)
    assert document["topic_permissions"] == topics, json.dumps(topics, indent=2)


def test_a_node_reads_only_its_own_queue_and_writes_only_replies_and_presence() -> None:
    for node in NODES:
        rights = permission(node)
        others = [TOPOLOGY.node_queue(n).name for n in NODES if n != node]
        assert allowed(rights["read"], TOPOLOGY.node_queue(node).name)
        assert not any(allowed(rights["read"], name) for name in others)
        assert not allowed(rights["read"], TOPOLOGY.researcher_queue("researcher").name)
        for exchange in (TOPOLOGY.replies_exchange, TOPOLOGY.presence_exchange):
            assert allowed(rights["write"], exchange.name)
        assert not allowed(rights["write"], TOPOLOGY.requests_exchange.name)
        assert not any(allowed(rights["write"], name) for name in others)


def test_the_researcher_sends_requests_and_reads_its_own_queues() -> None:
    rights = permission("researcher")
    assert allowed(rights["write"], TOPOLOGY.requests_exchange.name)
    assert not allowed(rights["write"], TOPOLOGY.replies_exchange.name)
    for spec in (TOPOLOGY.researcher_queue("researcher"), TOPOLOGY.presence_queue("researcher")):
        assert allowed(rights["read"], spec.name)
        assert allowed(rights["configure"], spec.name)
    for node in NODES:
        assert not allowed(rights["configure"], TOPOLOGY.node_queue(node).name)
        assert not allowed(rights["write"], TOPOLOGY.node_queue(node).name)


@dataclass
class Provisioned:
    """A vhost provisioned by provision.sh, with its users' names and passwords."""

    vhost: str
    users: dict[str, str]
    passwords: dict[str, str]

    def amqp_url(self, user: str) -> str:
        name = self.users[user]
        vhost = quote(self.vhost, safe="")
        return f"amqp://{name}:{self.passwords[user]}@{AMQP_HOST}:{AMQP_PORT}/{vhost}"


@pytest.fixture(scope="module")
def provisioned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Provisioned]:
    vhost = f"test-defs-{uuid.uuid4().hex[:10]}"
    arguments = command(load_compose()["services"]["provision"])[2:]
    users = {arg.split(":")[0]: f"{vhost}-{arg.split(':')[0]}" for arg in arguments}
    passwords = {user: secrets.token_hex(12) for user in users}
    folder = tmp_path_factory.mktemp("definitions")
    moved = folder / "definitions.json"
    moved.write_text(json.dumps(localize_definitions(definitions(), vhost=vhost, users=users)))
    env = {key: value for key, value in os.environ.items() if not key.startswith("RABBITMQ")}
    env.update(
        RABBITMQ_MANAGEMENT_URL=MANAGEMENT_URL,
        RABBITMQ_ADMIN_USER=ADMIN[0],
        RABBITMQ_ADMIN_PASSWORD=ADMIN[1],
        BROKER_NET_DEFINITIONS=str(moved),
    )
    for user, name in users.items():
        env[password_variable(name)] = passwords[user]
    renamed = [users[a.split(":")[0]] + a[len(a.split(":")[0]) :] for a in arguments]
    with httpx.Client(base_url=MANAGEMENT_URL + "/api", auth=ADMIN, timeout=10) as api:
        try:
            done = subprocess.run(
                ["sh", str(ROOT / "deploy" / "rabbitmq" / "provision.sh"), *renamed],
                env=env, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            yield Provisioned(vhost, users, passwords)
        finally:
            api.delete(f"/vhosts/{quote(vhost, safe='')}")
            for name in users.values():
                api.delete(f"/users/{quote(name, safe='')}")


@pytest.fixture
def management() -> Iterator[httpx.Client]:
    with httpx.Client(base_url=MANAGEMENT_URL + "/api", auth=ADMIN, timeout=10) as client:
        yield client


@pytest.mark.rabbitmq
def test_provisioning_loads_policies_topology_and_permissions(
    provisioned: Provisioned, management: httpx.Client
) -> None:
    vhost = quote(provisioned.vhost, safe="")
    document = definitions()
    policies = {p["name"]: p["definition"] for p in management.get(f"/policies/{vhost}").json()}
    assert policies == {p["name"]: p["definition"] for p in document["policies"]}
    exchanges = {e["name"]: e["type"] for e in management.get(f"/exchanges/{vhost}").json()}
    assert {e["name"]: e["type"] for e in document["exchanges"]}.items() <= exchanges.items()
    queues = {q["name"]: q["arguments"] for q in management.get(f"/queues/{vhost}").json()}
    assert queues == {q["name"]: q["arguments"] for q in document["queues"]}
    bindings = {
        (b["source"], b["destination"], b["routing_key"])
        for b in management.get(f"/bindings/{vhost}").json()
        if b["source"]
    }
    assert bindings == {
        (b["source"], b["destination"], b["routing_key"]) for b in document["bindings"]
    }
    for user, name in provisioned.users.items():
        found = management.get(f"/permissions/{vhost}/{quote(name, safe='')}").json()
        expected = permission(user)
        assert {k: found[k] for k in RIGHTS} == {k: expected[k] for k in RIGHTS}
        found_topics = management.get(f"/topic-permissions/{vhost}/{quote(name, safe='')}")
        assert sorted(
            (t["exchange"], t["write"], t["read"]) for t in found_topics.json()
        ) == sorted(
            (t["exchange"], t["write"], t["read"])
            for t in document["topic_permissions"]
            if t["user"] == user
        )
    tags = management.get(f"/users/{quote(provisioned.users['researcher'], safe='')}").json()
    assert "management" in str(tags["tags"])


@pytest.mark.rabbitmq
@pytest.mark.anyio
async def test_each_user_can_do_its_part_and_no_more(
    provisioned: Provisioned, tmp_path: Path
) -> None:
    agent = _start_agent(provisioned, "hospital-a", tmp_path)
    try:
        async with (
            AmqpTransport(provisioned.amqp_url("researcher")) as transport,
            Requests(transport, "researcher", topology=TOPOLOGY) as requests,
        ):
            await requests.wait_for_nodes(["hospital-a"], timeout=15)
            pinged = await requests.ping(["hospital-a"], timeout=10)
            assert pinged.status() == {"hospital-a": RequestStatus.SUCCESS}
        await _refused_to_declare(provisioned.amqp_url("researcher"), "hospital-a")
        await _refused_to_declare(provisioned.amqp_url("hospital-b"), "hospital-a")
        async with AmqpTransport(provisioned.amqp_url("hospital-b")) as transport:
            with pytest.raises(BrokerAccessError):
                await transport.publish(
                    TOPOLOGY.requests_exchange.name, "hospital-a",
                    OutgoingMessage(body=b"x", message_id="m1", type="ping_request"),
                )  # fmt: skip
        status = _researcher_status(provisioned)
        assert status.returncode == 1, status.stderr
        online = {row["node_id"]: row["online"] for row in json.loads(status.stdout)}
        assert online == {"hospital-a": True, "hospital-b": False, "hospital-c": False}
    finally:
        agent.terminate()
        code = agent.wait(timeout=40)
        assert agent.stderr is not None
        agent.stderr.close()
    assert code == 0


def _start_agent(provisioned: Provisioned, node: str, folder: Path) -> subprocess.Popen[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("BROKER_NET")}
    env.update(
        BROKER_NET_NODE_NODE_ID=node,
        BROKER_NET_NODE_AMQP_URL=provisioned.amqp_url(node),
        BROKER_NET_NODE_DATA_DIR=str(folder / node),
        BROKER_NET_NODE_HEARTBEAT_INTERVAL="0.5",
        # Message signing is another test's subject; a plain ping is enough here.
        BROKER_NET_NODE_SECURITY="false",
    )
    agent = subprocess.Popen(
        [sys.executable, "-m", "node_agent", "start"],
        env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert agent.stderr is not None
    said = []
    for line in agent.stderr:
        if line.strip() == f"node {node} ready":
            return agent
        said.append(line)
    agent.wait(timeout=10)
    agent.stderr.close()
    pytest.fail(f"{node} did not start as its own user: {''.join(said)}")


async def _refused_to_declare(url: str, node: str) -> None:
    async with AmqpTransport(url) as transport:
        with pytest.raises(BrokerAccessError):
            await transport.declare(TOPOLOGY.node_queue(node))


def _researcher_status(provisioned: Provisioned) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("BROKER_NET")}
    env.update(
        BROKER_NET_RESEARCHER_AMQP_URL=provisioned.amqp_url("researcher"),
        BROKER_NET_RESEARCHER_MANAGEMENT_URL=MANAGEMENT_URL,
        BROKER_NET_RESEARCHER_MANAGEMENT_USER=provisioned.users["researcher"],
        BROKER_NET_RESEARCHER_MANAGEMENT_PASSWORD=provisioned.passwords["researcher"],
    )
    return subprocess.run(
        [RESEARCHER_CLI, "status", "--json", "--listen", "1.5"],
        env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
