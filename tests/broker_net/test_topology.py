"""Topology: every name and declaration, as documented in docs/protocol.md."""

from __future__ import annotations

import pytest

from broker_net.topology import DEFAULT_NAMESPACE, ExchangeSpec, QueueSpec, Topology, check_id


def test_default_names() -> None:
    topology = Topology()
    assert topology.namespace == DEFAULT_NAMESPACE == "broker_net"
    # topic exchanges route like direct ones here (ids hold no dots or wildcards) and let
    # RabbitMQ's topic permissions restrict which routing keys each party may use
    assert topology.requests_exchange == ExchangeSpec("broker_net.requests", "topic")
    assert topology.replies_exchange == ExchangeSpec("broker_net.replies", "topic")
    assert topology.presence_exchange == ExchangeSpec("broker_net.presence", "fanout")
    assert topology.dead_letter_exchange == ExchangeSpec("broker_net.dead-letter", "fanout")


def test_exchanges_are_durable() -> None:
    topology = Topology()
    for exchange in topology.node_declarations("n1")[:4]:
        assert isinstance(exchange, ExchangeSpec)
        assert exchange.durable


def test_node_queue() -> None:
    queue = Topology().node_queue("hospital-a")
    assert queue == QueueSpec(
        "broker_net.node.hospital-a.requests",
        durable=True,
        auto_delete=False,
        arguments={
            "x-queue-type": "classic",
            "x-dead-letter-exchange": "broker_net.dead-letter",
        },
        bindings=(("broker_net.requests", "hospital-a"),),
    )


def test_researcher_queue_is_bound_by_its_own_name() -> None:
    queue = Topology().researcher_queue("alice")
    assert queue.name == "broker_net.researcher.alice.replies"
    assert queue.durable and not queue.auto_delete
    assert queue.arguments == {"x-queue-type": "classic"}
    assert queue.bindings == (("broker_net.replies", "broker_net.researcher.alice.replies"),)


def test_presence_queue_is_transient_and_bounded() -> None:
    queue = Topology().presence_queue("alice")
    assert queue.name == "broker_net.researcher.alice.presence"
    assert not queue.durable
    assert queue.auto_delete
    assert queue.arguments == {"x-message-ttl": 60_000, "x-max-length": 10_000}
    assert queue.bindings == (("broker_net.presence", ""),)


def test_dead_letter_queue() -> None:
    queue = Topology().dead_letter_queue
    assert queue.name == "broker_net.dead-letter"
    assert queue.durable
    assert "x-dead-letter-exchange" not in queue.arguments  # no dead-letter loop
    assert queue.bindings == (("broker_net.dead-letter", ""),)


def test_namespace_prefixes_every_name() -> None:
    topology = Topology("lab.site-1")
    names = [spec.name for spec in topology.researcher_declarations("alice")]
    names += [spec.name for spec in topology.node_declarations("n1")]
    assert all(name.startswith("lab.site-1.") for name in names)
    assert topology.node_queue("n1").bindings == (("lab.site-1.requests", "n1"),)


def test_declarations_are_ordered_exchanges_first() -> None:
    topology = Topology("ns")
    node = topology.node_declarations("n1")
    assert [spec.name for spec in node] == [
        "ns.requests",
        "ns.replies",
        "ns.presence",
        "ns.dead-letter",
        "ns.node.n1.requests",
    ]
    # the node declares no dead-letter queue, so its broker user needs no rights on it
    assert [type(spec) for spec in node] == [ExchangeSpec] * 4 + [QueueSpec]
    researcher = topology.researcher_declarations("alice")
    assert [spec.name for spec in researcher[4:]] == [
        "ns.dead-letter",
        "ns.researcher.alice.replies",
        "ns.researcher.alice.presence",
    ]


def test_every_binding_names_a_declared_exchange() -> None:
    topology = Topology()
    for specs in (topology.node_declarations("n1"), topology.researcher_declarations("r1")):
        exchanges = {spec.name for spec in specs if isinstance(spec, ExchangeSpec)}
        for spec in specs:
            if isinstance(spec, QueueSpec):
                assert {exchange for exchange, _ in spec.bindings} <= exchanges


def test_quorum_queues() -> None:
    topology = Topology(queue_type="quorum")
    for queue in (
        topology.node_queue("n1"),
        topology.researcher_queue("r1"),
        topology.dead_letter_queue,
    ):
        assert queue.arguments["x-queue-type"] == "quorum"
        assert queue.durable and not queue.auto_delete  # quorum queues must be
    # a presence queue is transient, which quorum queues cannot be
    assert "x-queue-type" not in topology.presence_queue("r1").arguments


def test_max_queue_length_dead_letters_overflow() -> None:
    queue = Topology(max_queue_length=50).node_queue("n1")
    assert queue.arguments["x-max-length"] == 50
    assert queue.arguments["x-overflow"] == "reject-publish-dlx"
    assert queue.arguments["x-dead-letter-exchange"] == "broker_net.dead-letter"


def test_max_queue_length_on_quorum_queues_refuses_without_dead_lettering() -> None:
    # RabbitMQ does not support reject-publish-dlx on quorum queues and would drop the oldest
    # request instead
    queue = Topology(queue_type="quorum", max_queue_length=50).node_queue("n1")
    assert queue.arguments["x-max-length"] == 50
    assert queue.arguments["x-overflow"] == "reject-publish"


def test_no_max_length_by_default() -> None:
    assert "x-max-length" not in Topology().node_queue("n1").arguments
    assert "x-overflow" not in Topology().node_queue("n1").arguments


def test_specs_are_values() -> None:
    assert Topology("ns").node_queue("n1") == Topology("ns").node_queue("n1")
    assert hash(Topology("ns").requests_exchange) == hash(ExchangeSpec("ns.requests", "topic"))


@pytest.mark.parametrize(
    "value",
    ["a", "hospital-a", "node_01", "A" * 100, "0lab", "x-y_z"],
)
def test_valid_ids(value: str) -> None:
    assert check_id("node id", value) == value
    assert Topology().node_queue(value).name == f"broker_net.node.{value}.requests"


@pytest.mark.parametrize(
    "value",
    [
        "",
        "a.b",
        "a b",
        "-a",
        "_a",
        "a/b",
        "a*",
        "a#",
        "é",
        "A" * 101,
        "abc\n",
        "\nabc",
    ],
    ids=repr,
)
def test_invalid_ids_are_refused(value: str) -> None:
    with pytest.raises(ValueError, match="must be 1-100 letters, digits, '-' or '_'"):
        check_id("node id", value)
    with pytest.raises(ValueError, match="node id"):
        Topology().node_queue(value)
    with pytest.raises(ValueError, match="researcher id"):
        Topology().researcher_queue(value)
    with pytest.raises(ValueError, match="researcher id"):
        Topology().presence_queue(value)


@pytest.mark.parametrize("namespace", ["", "bad namespace", ".lead", "a/b", "ns\n"], ids=repr)
def test_invalid_namespaces_are_refused(namespace: str) -> None:
    with pytest.raises(ValueError, match="namespace"):
        Topology(namespace)
