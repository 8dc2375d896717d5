"""Per-party broker users: each reaches only what its role needs."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import aio_pika
import aiormq
import anyio
import anyio.lowlevel
import pytest

from broker_net.admin.management import ManagementClient
from broker_net.admin.provisioning import provision, researcher_permissions
from broker_net.amqp import AmqpTransport
from broker_net.errors import BrokerAccessError
from broker_net.messages import PingRequest
from broker_net.topology import Topology
from node_agent.agent import NodeAgent
from node_agent.settings import NodeSettings
from researcher.dashboard.watch import BrokerWatch
from researcher.requests.policies import DiscardOnTimeout, RequestStatus
from researcher.requests.router import Requests
from researcher.settings import ResearcherSettings
from tests.conftest import AMQP_HOST, AMQP_PORT, MANAGEMENT_URL

pytestmark = [pytest.mark.rabbitmq, pytest.mark.anyio]


class Deployment:
    def __init__(self, vhost: str, prefix: str, passwords: dict[str, str]) -> None:
        self.vhost = vhost
        self.prefix = prefix
        self.passwords = passwords

    def url(self, party: str) -> str:
        user = f"{self.prefix}{party}"
        return (
            f"amqp://{quote(user, safe='')}:{quote(self.passwords[user], safe='')}"
            f"@{AMQP_HOST}:{AMQP_PORT}/{quote(self.vhost, safe='')}"
        )


@pytest.fixture
async def deployment() -> AsyncIterator[Deployment]:
    vhost = f"test-prov-{uuid.uuid4().hex[:8]}"
    prefix = f"t{uuid.uuid4().hex[:6]}-"
    async with ManagementClient(MANAGEMENT_URL) as management:
        passwords = await provision(
            management, vhost, Topology(), researcher_id="alice", nodes=["n1", "n2"],
            username_prefix=prefix,
        )  # fmt: skip
        try:
            yield Deployment(vhost, prefix, passwords)
        finally:
            await management.delete_vhost(vhost)
            for user in passwords:
                await management.delete_user(user)


async def _node(url: str, node: str, folder: Path) -> tuple[AmqpTransport, NodeAgent]:
    transport = AmqpTransport(url, connection_name=f"node:{node}")
    settings = NodeSettings(node_id=node, data_dir=folder / node, security=False)
    return transport, NodeAgent(settings, transport, shutdown_grace=0.5)


async def test_each_party_works_with_its_own_user(deployment: Deployment, tmp_path: Path) -> None:
    transport, agent = await _node(deployment.url("n1"), "n1", tmp_path)
    async with (
        transport,
        agent,
        AmqpTransport(deployment.url("alice"), connection_name="alice") as researcher_transport,
        Requests(researcher_transport, "alice") as requests,
    ):
        await agent.wait_ready()
        fed = await requests.request(
            PingRequest(researcher_id="alice"), ["n1"], [DiscardOnTimeout(5)]
        )
        assert fed.status() == {"n1": RequestStatus.SUCCESS}


async def test_a_node_cannot_consume_another_nodes_queue(
    deployment: Deployment, tmp_path: Path
) -> None:
    # n2's queue exists once n2 has started.
    transport, agent = await _node(deployment.url("n2"), "n2", tmp_path)
    async with transport, agent:
        await agent.wait_ready()
    async with AmqpTransport(deployment.url("n1"), connection_name="n1") as intruder:
        with pytest.raises(BrokerAccessError, match="ACCESS_REFUSED"):
            async with intruder.consume(Topology().node_queue("n2")) as deliveries:
                async for _ in deliveries:
                    break


async def test_a_node_cannot_publish_as_the_researcher(deployment: Deployment) -> None:
    async with await aio_pika.connect(deployment.url("n1")) as connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(Topology().requests_exchange.name, ensure=False)
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused, match="ACCESS_REFUSED"):
            await exchange.publish(aio_pika.Message(b"forged"), routing_key="n2")


async def test_a_node_cannot_bind_its_queue_to_another_nodes_requests(
    deployment: Deployment, tmp_path: Path
) -> None:
    transport, agent = await _node(deployment.url("n1"), "n1", tmp_path)
    async with transport, agent:
        await agent.wait_ready()
    topology = Topology()
    async with await aio_pika.connect(deployment.url("n1")) as connection:
        channel = await connection.channel()
        queue = await channel.get_queue(topology.node_queue("n1").name, ensure=False)
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused, match="ACCESS_REFUSED"):
            await queue.bind(topology.requests_exchange.name, routing_key="n2")
        await anyio.lowlevel.checkpoint()


async def test_a_researcher_cannot_reach_a_researcher_whose_id_it_prefixes() -> None:
    vhost = f"test-prov-{uuid.uuid4().hex[:8]}"
    prefix = f"t{uuid.uuid4().hex[:6]}-"
    async with ManagementClient(MANAGEMENT_URL) as management:
        passwords = {}
        try:
            for researcher in ("alice", "alice-2"):
                passwords |= await provision(
                    management, vhost, Topology(), researcher_id=researcher, nodes=[],
                    username_prefix=prefix,
                )  # fmt: skip
            deployment = Deployment(vhost, prefix, passwords)
            async with (
                AmqpTransport(deployment.url("alice-2"), connection_name="alice-2") as other,
                Requests(other, "alice-2"),  # declares alice-2's reply queue
                AmqpTransport(deployment.url("alice"), connection_name="alice") as alice,
            ):
                with pytest.raises(BrokerAccessError, match="ACCESS_REFUSED"):
                    async with alice.consume(Topology().researcher_queue("alice-2")) as replies:
                        async for _ in replies:
                            break
                async with Requests(alice, "alice"):  # its own queues still work
                    pass
        finally:
            await management.delete_vhost(vhost)
            for user in passwords:
                await management.delete_user(user)


def test_a_researcher_id_cannot_take_another_researchers_helper_id() -> None:
    with pytest.raises(ValueError, match="reserved"):
        researcher_permissions(Topology(), "alice-status")


def test_a_researcher_may_listen_on_its_dashboards_presence_queues_only() -> None:
    allowed = researcher_permissions(Topology("ns"), "alice")
    listener = BrokerWatch(ResearcherSettings(researcher_id="alice", namespace="ns")).listener_id
    queue = Topology("ns").presence_queue(listener).name
    for pattern in (allowed.configure, allowed.write, allowed.read):
        assert re.search(pattern, queue)
        assert not re.search(pattern, queue.replace("alice", "alice-2"))
        assert not re.search(pattern, queue.replace(".presence", ".replies"))
        assert not re.search(pattern, "ns.researcher.alice-dashboard-nothex!.presence")


async def test_a_researchers_dashboard_hears_the_nodes_with_its_user(
    deployment: Deployment, tmp_path: Path
) -> None:
    settings = ResearcherSettings(
        researcher_id="alice", amqp_url=deployment.url("alice"), management_url=MANAGEMENT_URL,
        data_dir=tmp_path / "alice", security=False,
    )  # fmt: skip
    watch = BrokerWatch(settings)
    transport, agent = await _node(deployment.url("n1"), "n1", tmp_path)
    async with transport, agent, anyio.create_task_group() as group:
        await agent.wait_ready()
        group.start_soon(watch.run)
        with anyio.fail_after(30):
            while [(n.node_id, n.state) for n in watch.nodes()] != [("n1", "up")]:
                await anyio.sleep(0.1)
        assert watch.broker.ok, watch.broker.text
        group.cancel_scope.cancel()
