"""Broker URL lists: parsing, redaction, settings, and connecting past a dead broker."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from pydantic import ValidationError

from broker_net.amqp import AmqpTransport
from broker_net.amqp.failover import broker_urls, redact
from broker_net.errors import ConnectionLostError
from node_agent.settings import NodeSettings
from researcher.settings import ResearcherSettings

pytestmark = pytest.mark.anyio


def test_one_url_is_a_list_of_one() -> None:
    assert broker_urls("amqp://guest:guest@127.0.0.1:5672/") == [
        "amqp://guest:guest@127.0.0.1:5672/"
    ]


def test_later_entries_may_be_host_and_port_only() -> None:
    urls = broker_urls(
        "amqps://node:s3cret@rmq1:5671/broker-net?heartbeat=10, rmq2:5672,rmq3,"
        "amqp://other:pw@rmq4/elsewhere"
    )
    assert urls == [
        "amqps://node:s3cret@rmq1:5671/broker-net?heartbeat=10",
        "amqps://node:s3cret@rmq2:5672/broker-net?heartbeat=10",
        "amqps://node:s3cret@rmq3/broker-net?heartbeat=10",
        "amqp://other:pw@rmq4/elsewhere",
    ]


def test_escaped_characters_survive() -> None:
    urls = broker_urls("amqp://u:p%2Cx%40y@h1:5672/test%2Fvhost,h2:5673")
    assert urls[1] == "amqp://u:p%2Cx%40y@h2:5673/test%2Fvhost"


@pytest.mark.parametrize("value", ["", "amqp://h1/,", "amqp://h1/,,h2", "h1:5672,amqp://h2/"])
def test_malformed_lists_are_refused(value: str) -> None:
    with pytest.raises(ValueError):
        broker_urls(value)


def test_redaction_hides_every_password() -> None:
    shown = redact("amqp://a:secret1@h1:1/v,amqp://b:secret2@h2:2/v")
    assert "secret" not in shown
    assert shown == "amqp://***@h1:1/v,amqp://***@h2:2/v"


def test_settings_take_a_list_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    urls = "amqp://n:pw@rmq1:5672/broker-net,rmq2:5672,rmq3:5672"
    monkeypatch.setenv("BROKER_NET_NODE_AMQP_URL", urls)
    monkeypatch.setenv("BROKER_NET_RESEARCHER_AMQP_URL", urls)
    assert NodeSettings(node_id="n1").amqp_url == urls
    assert ResearcherSettings().vhost == "broker-net"
    with pytest.raises(ValidationError):
        NodeSettings(node_id="n1", amqp_url="amqp://rmq1/,")


def test_nacks_are_retried_on_clusters_only() -> None:
    single = AmqpTransport("amqp://guest:guest@127.0.0.1:5672/")
    cluster = AmqpTransport("amqp://guest:guest@127.0.0.1:5681/,127.0.0.1:5682")
    assert single.nack_retry == 0
    assert cluster.nack_retry > 1
    assert AmqpTransport(single.url, nack_retry=3).nack_retry == 3


@pytest.mark.rabbitmq
async def test_a_dead_first_broker_is_skipped(amqp_url: str, rabbitmq_vhost: str) -> None:
    # Nothing listens on port 1: the transport connects to the next URL of the list.
    dead_first = f"amqp://guest:guest@127.0.0.1:1/{quote(rabbitmq_vhost, safe='')},{amqp_url}"
    async with AmqpTransport(dead_first, connection_name="failover", connect_timeout=10) as t:
        assert await t.consumer_count("no-such-queue") is None


@pytest.mark.rabbitmq
async def test_every_broker_dead_is_a_lost_connection() -> None:
    with pytest.raises(ConnectionLostError):
        async with AmqpTransport("amqp://guest:guest@127.0.0.1:1/,127.0.0.1:2", connect_timeout=3):
            pass
