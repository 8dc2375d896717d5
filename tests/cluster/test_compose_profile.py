"""The ``cluster`` profile of docker-compose.yml: three RabbitMQ nodes that find each other,
and a provisioning that makes every queue a quorum queue the parties can declare.

Without a container engine here, the profile is read as Compose reads it, and its provisioning
(the ``provision-cluster`` service's rewrite of deploy/rabbitmq/definitions.json) is imported
into the test cluster, where each party then declares its topology as its own user.
"""

from __future__ import annotations

import json
import secrets
import shlex
import subprocess
from pathlib import Path
from typing import Any

import anyio
import pytest

from broker_net.amqp import AmqpTransport
from broker_net.topology import Topology
from tests.deploy.compose import (
    DEFINITIONS_FILE,
    ENV_EXAMPLE,
    ROOT,
    command,
    depends_on,
    load_compose,
    mounts,
    read_env_file,
)
from tests.support.cluster import LocalCluster

BROKERS = ["rabbitmq-1", "rabbitmq-2", "rabbitmq-3"]
TOPOLOGY = Topology(queue_type="quorum")


def _services() -> dict[str, Any]:
    env = read_env_file(ENV_EXAMPLE)
    env.update({key: "x" * 16 for key in env if key.endswith("_PASSWORD")})
    return dict(load_compose(env)["services"])


def _in_profile(service: dict[str, Any]) -> bool:
    return "cluster" in (service.get("profiles") or [])


def _cluster_definitions() -> dict[str, Any]:
    """definitions.json as ``provision-cluster`` rewrites it, by running its own ``sed``."""
    script = command(_services()["provision-cluster"])[2]
    words = shlex.split(script)
    sed = words[: words.index(">")]
    assert sed[0] == "sed" and sed[-1] == "/provision/definitions.json"
    sed[-1] = str(DEFINITIONS_FILE)
    done = subprocess.run(sed, capture_output=True, text=True, check=True)
    return dict(json.loads(done.stdout))


def test_the_profile_is_three_brokers_that_find_each_other() -> None:
    services = _services()
    profile = {name for name, service in services.items() if _in_profile(service)}
    assert profile == {*BROKERS, "rabbitmq-cluster-cookie", "provision-cluster"}
    peers = {
        line.split("=", 1)[1].strip()
        for line in (ROOT / "deploy/rabbitmq/cluster.conf").read_text().splitlines()
        if line.startswith("cluster_formation.classic_config.nodes.")
    }
    assert peers == {f"rabbit@{services[name]['hostname']}" for name in BROKERS}
    ports = [port for name in BROKERS for port in services[name]["ports"]]
    assert all(port.startswith("127.0.0.1:") for port in ports)
    assert len({port.rsplit(":", 1)[0] for port in ports}) == len(ports)
    data = set()
    for name in BROKERS:
        volumes = dict((target, source) for source, target in mounts(services[name]))
        assert volumes["/cookie"] == "rabbitmq-cluster-cookie"
        assert "/etc/rabbitmq/conf.d/91-broker-net-cluster.conf" in volumes
        data.add(volumes["/var/lib/rabbitmq"])
        assert depends_on(services[name]) == {
            "rabbitmq-cluster-cookie": "service_completed_successfully"
        }
        assert "rabbitmq-diagnostics" in services[name]["healthcheck"]["test"]
    assert len(data) == len(BROKERS)
    assert depends_on(services["provision-cluster"]) == dict.fromkeys(BROKERS, "service_healthy")
    for name, service in services.items():  # `docker compose up` alone never needs the profile
        if not _in_profile(service):
            assert not set(depends_on(service)) & profile, name


def test_the_cluster_provisioning_makes_every_queue_quorum() -> None:
    document = _cluster_definitions()
    queues = {queue["name"]: queue["arguments"] for queue in document["queues"]}
    nodes = [name.split(".")[2] for name in queues if name.endswith(".requests")]
    expected = [TOPOLOGY.dead_letter_queue, *(TOPOLOGY.node_queue(node) for node in nodes)]
    assert queues == {spec.name: spec.arguments for spec in expected}
    overflow = {p["name"]: p["definition"].get("overflow") for p in document["policies"]}
    assert overflow["broker_net-node-requests"] == "reject-publish"


@pytest.mark.anyio
@pytest.mark.cluster
@pytest.mark.rabbitmq
@pytest.mark.timeout(300)
async def test_the_cluster_provisioning_on_a_real_cluster(
    healthy_cluster: LocalCluster, tmp_path: Path
) -> None:
    document = _cluster_definitions()
    vhost = document["vhosts"][0]["name"]
    users = sorted({p["user"] for p in document["permissions"]})
    passwords = {user: secrets.token_hex(12) for user in users}
    definitions = tmp_path / "definitions.json"
    definitions.write_text(json.dumps(document))

    def provision() -> None:
        for user, password in passwords.items():
            healthy_cluster.ctl(1, "add_user", user, password)
        healthy_cluster.ctl(1, "import_definitions", str(definitions))

    def clean_up() -> None:
        healthy_cluster.ctl(1, "delete_vhost", vhost)
        for user in users:
            healthy_cluster.ctl(1, "delete_user", user)

    await anyio.to_thread.run_sync(provision)
    try:
        for user in users:
            # Each party as its own user, on a cluster URL list, declares what it declares.
            url = healthy_cluster.urls(vhost, user=user, password=passwords[user])
            declarations = (
                TOPOLOGY.researcher_declarations("researcher")
                if user == "researcher"
                else TOPOLOGY.node_declarations(user)
            )
            async with AmqpTransport(url, connection_name=f"provisioned:{user}") as transport:
                await transport.declare(*declarations)
        queues = await anyio.to_thread.run_sync(healthy_cluster.queues, 1, vhost)
        durable = {q["name"]: q for q in queues if not q["name"].endswith(".presence")}
        assert {q["type"] for q in durable.values()} == {"quorum"}
        assert all(len(q["members"]) == 3 for q in durable.values())
    finally:
        await anyio.to_thread.run_sync(clean_up)
