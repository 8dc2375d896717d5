"""docker-compose.yml's services run, without a container engine, as local processes.

Every service but ``rabbitmq`` (the local broker plays it) runs its compose command with its
compose environment, in dependency order: ``provision`` creates the users and the topology,
the three node agents set up their shard and serve, and the researcher runs the demo against
them. The host name ``rabbitmq`` points at the local broker, volumes are folders, and the
vhost, namespace and user names are this run's own.
"""

from __future__ import annotations

import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from tests.conftest import ADMIN, AMQP_HOST, AMQP_PORT, MANAGEMENT_URL
from tests.deploy.compose import (
    BROKER_SERVICE,
    ENV_EXAMPLE,
    Broker,
    LocalDeployment,
    command,
    depends_on,
    load_compose,
    read_env_file,
    start_order,
)

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]

ONE_SHOT_TIMEOUT = 60.0
DEMO_TIMEOUT = 90.0


def run_env() -> dict[str, str]:
    """This run's .env: fresh passwords, and the local broker's administrator."""
    env = read_env_file(ENV_EXAMPLE)
    env.update({k: secrets.token_hex(12) for k in env if k.endswith("_PASSWORD")})
    env.update(RABBITMQ_ADMIN_USER=ADMIN[0], RABBITMQ_ADMIN_PASSWORD=ADMIN[1])
    return env


@pytest.fixture
def deployment(rabbitmq_vhost: str, namespace: str, tmp_path: Path) -> Iterator[LocalDeployment]:
    env = run_env()
    compose = load_compose(env)
    users = [arg.split(":")[0] for arg in command(compose["services"]["provision"])[2:]]
    local = LocalDeployment(
        compose=compose,
        env=env,
        folder=tmp_path,
        broker=Broker(AMQP_HOST, AMQP_PORT, MANAGEMENT_URL),
        vhost=rabbitmq_vhost,
        namespace=namespace,
        users={user: f"{namespace}-{user}" for user in users},
    )
    try:
        yield local
    finally:
        local.stop_all(timeout=5)
        with httpx.Client(base_url=MANAGEMENT_URL + "/api", auth=ADMIN, timeout=10) as api:
            for user in local.users.values():
                api.delete(f"/users/{quote(user, safe='')}")


def test_compose_services_run_the_demo_end_to_end(deployment: LocalDeployment) -> None:
    services = deployment.services
    awaited = {
        dependency
        for service in services.values()
        for dependency, condition in depends_on(service).items()
        if condition == "service_completed_successfully"
    }
    long_running = []
    for name in start_order(services):
        if name == BROKER_SERVICE or name == "researcher":
            continue
        process = deployment.start(name)
        if name in awaited:
            code = process.wait(timeout=ONE_SHOT_TIMEOUT)
            assert code == 0, f"{name} exited {code}:\n{deployment.log(name)}"
        else:
            long_running.append(name)

    demo = deployment.start("researcher")
    finished: int | None
    try:
        finished = demo.wait(timeout=DEMO_TIMEOUT)
    except subprocess.TimeoutExpired:
        finished = None
    logs = "\n".join(f"--- {n}\n{deployment.log(n)[-3000:]}" for n in [*long_running, "researcher"])
    assert finished == 0, f"the demo exited {finished}\n{logs}"

    for name in long_running:
        assert deployment.processes[name].poll() is None, f"{name} died\n{logs}"
    served = _acknowledged_requests(deployment, long_running)
    assert all(count > 0 for count in served.values()), served
    codes = deployment.stop_all()
    assert all(codes[name] == 0 for name in long_running), f"{codes}\n{logs}"


def _acknowledged_requests(deployment: LocalDeployment, nodes: list[str]) -> dict[str, int]:
    """Requests each node acknowledged, from the management API (figures lag a few seconds)."""
    vhost = quote(deployment.vhost, safe="")
    counts: dict[str, int] = {}
    deadline = time.monotonic() + 15
    with httpx.Client(base_url=MANAGEMENT_URL + "/api", auth=ADMIN, timeout=10) as api:
        while time.monotonic() < deadline:
            for node in nodes:
                queue = api.get(f"/queues/{vhost}/{deployment.namespace}.node.{node}.requests")
                stats = queue.json().get("message_stats", {}) if queue.is_success else {}
                counts[node] = int(stats.get("ack", 0))
            if all(counts.values()):
                break
            time.sleep(1)
    return counts
