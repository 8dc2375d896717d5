"""The code against the language-neutral wire test vectors of docs/vectors/.

Nothing here regenerates a vector: each test loads a JSON file and checks that the code decodes
every vector to the expected values, makes the same bytes again from the fixed inputs, derives
the same keys and accepts every signature and MAC. When the wire changes on purpose, the
vectors are rewritten with scripts/make_vectors.py and the protocol version moves with them.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math
import uuid
from collections.abc import Iterator
from datetime import datetime
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import msgpack
import numpy as np
import pytest
import xxhash
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

import broker_net.chunking as chunking_module
import broker_net.envelope as envelope_module
import node_agent.dispatch as dispatch_module
import node_agent.refusals as refusals_module
from broker_net.amqp.publisher import ConfirmedPublisher
from broker_net.chunking import TRANSFER_ERROR, Chunking, publish_chunked
from broker_net.codec import decode, decode_message, encode
from broker_net.codes import ErrorCode
from broker_net.crypto.authentication import Authenticators, Security, Verifier
from broker_net.crypto.identities import Identity, PublicIdentity, TrustStore
from broker_net.envelope import EnvelopeHeader, seal, unseal
from broker_net.errors import DecodeError, SecurityError
from broker_net.frames import frame
from broker_net.messages import MESSAGE_TYPES
from broker_net.reassembly import Reassembler
from broker_net.topology import Topology
from broker_net.transport import Delivery, OutgoingMessage, Transport
from broker_net.version import PROTOCOL_VERSION
from node_agent.context import NodeContext
from node_agent.dispatch import Dispatcher
from node_agent.handlers import HANDLERS
from node_agent.replier import ReplySender
from node_agent.replies import ReplyStore

VECTORS = Path(__file__).parents[2] / "docs" / "vectors"
FILES = (
    "identities.json",
    "mac_keys.json",
    "envelopes.json",
    "ndarray.json",
    "chunking.json",
    "errors.json",
)
AUTH_FIELDS = {"auth_alg": None, "key_id": None, "body_digest": None}


@cache
def load(name: str) -> Any:
    return json.loads((VECTORS / name).read_text())


def cases(name: str, key: str = "cases") -> list[Any]:
    return list(load(name)[key])


def ids(name: str, field: str, key: str = "cases") -> list[str]:
    return [str(case[field]) for case in cases(name, key)]


# --- typed JSON --------------------------------------------------------------------------------


def from_json(value: Any) -> Any:
    """The value a vector's JSON stands for: tagged objects become bytes, datetimes, arrays."""
    if isinstance(value, dict):
        if len(value) == 1:
            ((tag, inner),) = value.items()
            if tag == "$bin":
                return bytes.fromhex(inner)
            if tag == "$timestamp":
                return msgpack.Timestamp(inner["seconds"], inner["nanoseconds"]).to_datetime()
            if tag == "$ndarray":
                return array(inner["descr"], inner["shape"], inner["data"])
        return {key: from_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [from_json(item) for item in value]
    return value


def as_descr(descr: Any) -> Any:
    """A descriptor read from JSON (lists) in the form numpy takes (tuples for fields)."""
    if isinstance(descr, str):
        return descr
    fields = []
    for field in descr:
        name = tuple(field[0]) if isinstance(field[0], list) else field[0]
        rest = (tuple(field[2]),) if len(field) == 3 else ()
        fields.append((name, as_descr(field[1]), *rest))
    return fields


def array(descr: Any, shape: list[int], data: str) -> np.ndarray[Any, Any]:
    dtype = np.lib.format.descr_to_dtype(as_descr(descr))
    raw = bytes.fromhex(data)
    return np.frombuffer(raw, dtype=dtype, count=math.prod(shape)).reshape(shape)


def assert_same(actual: Any, expected: Any, path: str = "$") -> None:
    """Equal values of equal types, maps with their keys in the same order."""
    if isinstance(expected, np.ndarray):
        assert isinstance(actual, np.ndarray), f"{path}: {type(actual).__name__}, not an array"
        assert actual.dtype == expected.dtype, f"{path}: dtype {actual.dtype} != {expected.dtype}"
        assert actual.shape == expected.shape, f"{path}: shape {actual.shape} != {expected.shape}"
        assert actual.tobytes() == expected.tobytes(), f"{path}: array data differ"
        return
    assert type(actual) is type(expected), (
        f"{path}: {type(actual).__name__} {actual!r} != {type(expected).__name__} {expected!r}"
    )
    if isinstance(expected, dict):
        assert list(actual) == list(expected), f"{path}: keys {list(actual)} != {list(expected)}"
        for key in expected:
            assert_same(actual[key], expected[key], f"{path}.{key}")
    elif isinstance(expected, list):
        assert len(actual) == len(expected), f"{path}: {len(actual)} items, not {len(expected)}"
        for index, (got, want) in enumerate(zip(actual, expected, strict=True)):
            assert_same(got, want, f"{path}[{index}]")
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


def _without(value: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {key: item for key, item in value.items() if key not in keys}


# --- parties -----------------------------------------------------------------------------------


@cache
def identity(party: str) -> Identity:
    case = next(c for c in cases("identities.json") if c["party_id"] == party)
    return Identity(
        party,
        case["role"],
        Ed25519PrivateKey.from_private_bytes(bytes.fromhex(case["ed25519_private"])),
        X25519PrivateKey.from_private_bytes(bytes.fromhex(case["x25519_private"])),
    )


def trust_of(party: str) -> TrustStore:
    """What ``party`` trusts in the vectors: every other party."""
    return TrustStore(
        tuple(
            identity(c["party_id"]).public()
            for c in cases("identities.json")
            if c["party_id"] != party
        )
    )


def public_key(party: str) -> Ed25519PublicKey:
    case = next(c for c in cases("identities.json") if c["party_id"] == party)
    return Ed25519PublicKey.from_public_bytes(bytes.fromhex(case["ed25519_public"]))


def mac_key(sender: str, recipient: str) -> bytes:
    case = next(
        c for c in cases("mac_keys.json") if (c["sender"], c["recipient"]) == (sender, recipient)
    )
    return bytes.fromhex(case["key"])


# --- every file --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FILES)
def test_vectors_and_protocol_version_move_together(name: str) -> None:
    content = load(name)
    assert content["description"]
    assert content["protocol_version"] == PROTOCOL_VERSION, (
        f"docs/vectors/{name} was made for protocol version {content['protocol_version']}, the "
        f"code speaks {PROTOCOL_VERSION}: the vectors and the protocol version must move "
        "together. Change the wire on purpose, bump PROTOCOL_VERSION and run "
        "scripts/make_vectors.py, never one without the other."
    )


def test_every_message_type_has_an_envelope_vector() -> None:
    assert sorted(ids("envelopes.json", "message_type")) == sorted(MESSAGE_TYPES)


# --- identities --------------------------------------------------------------------------------


@pytest.mark.parametrize("case", cases("identities.json"), ids=ids("identities.json", "party_id"))
def test_an_identity_from_fixed_keys_has_the_vector_keys_fingerprint_and_line(
    case: dict[str, Any],
) -> None:
    own = identity(case["party_id"])
    public = own.public()
    assert public.role == case["role"]
    assert public.signing_key.hex() == case["ed25519_public"]
    assert public.agreement_key.hex() == case["x25519_public"]
    assert own.fingerprint == public.fingerprint == case["fingerprint"] == case["key_id"]
    assert public.signature.hex() == case["self_signature"]
    assert public.to_text() == case["identity_line"]
    # The documented recipes, as another implementation would follow them.
    digest = hashlib.sha256(bytes.fromhex(case["fingerprint_input"])).hexdigest()
    assert digest == case["fingerprint_sha256"]
    assert ":".join(digest[i : i + 4] for i in range(0, 32, 4)) == case["fingerprint"]
    signed = bytes.fromhex(case["self_signed_bytes"])
    assert signed == bytes.fromhex(load("identities.json")["identity_label"]) + msgpack.packb(
        [case["party_id"], case["role"], public.signing_key, public.agreement_key]
    )
    public.verify(signed, bytes.fromhex(case["self_signature"]))
    read = PublicIdentity.from_text(case["identity_line"])
    assert read == public and read.fingerprint == case["fingerprint"]


@pytest.mark.parametrize(
    "case", cases("identities.json", "lines"), ids=ids("identities.json", "name", "lines")
)
def test_identity_lines_are_accepted_or_refused_as_the_vectors_say(case: dict[str, Any]) -> None:
    if case["accepted"]:
        read = PublicIdentity.from_text(case["line"])
        assert read.party_id == case["party_id"]
        assert read == identity(case["party_id"]).public()
        return
    with pytest.raises(SecurityError) as refused:
        PublicIdentity.from_text(case["line"])
    assert getattr(refused.value, "code", None) is ErrorCode[case["error"]]


# --- pairwise MAC keys -------------------------------------------------------------------------


def _pair(case: dict[str, Any]) -> str:
    return f"{case['sender']}->{case['recipient']}"


@pytest.mark.parametrize("case", cases("mac_keys.json"), ids=_pair)
def test_the_pairwise_mac_key_is_the_vector_key(case: dict[str, Any]) -> None:
    sender, recipient = identity(case["sender"]), identity(case["recipient"])
    secret = bytes.fromhex(case["shared_secret"])
    assert sender.exchange(recipient.public().agreement_key) == secret
    assert recipient.exchange(sender.public().agreement_key) == secret
    assert (case["sender_fingerprint"], case["recipient_fingerprint"]) == (
        sender.fingerprint,
        recipient.fingerprint,
    )
    # The documented derivation, with a general HKDF.
    label = bytes.fromhex(load("mac_keys.json")["mac_label"])
    info = label + msgpack.packb(
        [case["sender"], sender.fingerprint, case["recipient"], recipient.fingerprint]
    )
    assert bytes.fromhex(case["salt"]) == label and bytes.fromhex(case["info"]) == info
    key = HKDF(SHA256(), case["length"], salt=label, info=info).derive(secret)
    assert key.hex() == case["key"]
    probe = bytes.fromhex(case["probe"])
    assert hmac.digest(key, probe, "sha256").hex() == case["probe_mac"]
    # The code's sender side MACs under that very key.
    authenticator = Authenticators(sender, trust_of(case["sender"])).for_recipient(
        case["recipient"]
    )
    assert authenticator.algorithm == "hmac-sha256-x25519"
    assert authenticator.key_id == case["key_id"] == sender.fingerprint
    assert authenticator.sign(probe).hex() == case["probe_mac"]


# --- envelopes ---------------------------------------------------------------------------------

ENVELOPES = cases("envelopes.json")
ENVELOPE_IDS = ids("envelopes.json", "message_type")


def _message(case: dict[str, Any]) -> Any:
    return MESSAGE_TYPES[case["message_type"]].model_validate(from_json(case["message"]))


def _header(case: dict[str, Any]) -> EnvelopeHeader:
    """The header before sealing: the vector's, without what sealing adds."""
    return EnvelopeHeader(**(from_json(case["header"]) | AUTH_FIELDS))


def _authenticator(case: dict[str, Any]) -> Any:
    sender = case["sender"]
    return Authenticators(identity(sender), trust_of(sender)).for_recipient(case["recipient"])


@pytest.mark.parametrize("case", ENVELOPES, ids=ENVELOPE_IDS)
def test_an_envelope_vector_reads_to_its_header_and_message(case: dict[str, Any]) -> None:
    data = bytes.fromhex(case["envelope"])
    opened = unseal(data)
    assert opened.header_bytes.hex() == case["header_bytes"]
    assert data[1 : 1 + len(opened.header_bytes)] == opened.header_bytes
    assert opened.auth is not None and opened.auth.hex() == case["auth"]
    assert bytes(opened.body).hex() == case["body"]
    expected_header = from_json(case["header"])
    assert_same(opened.header.as_dict(), expected_header)
    assert_same(msgpack.unpackb(opened.header_bytes), expected_header)
    assert (opened.header.auth_alg, opened.header.key_id) == (case["auth_alg"], case["key_id"])
    body = bytes.fromhex(case["body"])
    assert hashlib.sha256(body).hexdigest() == case["body_sha256"]
    assert opened.header.body_digest == hashlib.sha256(body).digest()
    assert_same(decode(body), from_json(case["message"]))
    message = decode_message(body)
    assert message.type == case["message_type"]
    assert_same(message.model_dump(), _message(case).model_dump())


@pytest.mark.parametrize("case", ENVELOPES, ids=ENVELOPE_IDS)
def test_an_envelope_vector_is_authentic(case: dict[str, Any]) -> None:
    opened = unseal(bytes.fromhex(case["envelope"]))
    auth = bytes.fromhex(case["auth"])
    # As another implementation checks it, from the other vector files.
    if case["auth_alg"] == "hmac-sha256-x25519":
        key = mac_key(case["mac_key"]["sender"], case["mac_key"]["recipient"])
        assert (case["mac_key"]["sender"], case["mac_key"]["recipient"]) == (
            case["sender"],
            case["recipient"],
        )
        assert hmac.digest(key, opened.header_bytes, "sha256") == auth
    else:
        assert case["auth_alg"] == "ed25519" and case["recipient"] == "*"
        public_key(case["signer"]).verify(auth, opened.header_bytes)
    # As the code checks it.
    verifier_party = case["verified_by"]
    verifier = Verifier(
        identity(verifier_party), trust_of(verifier_party), clock=lambda: opened.header.created_at
    )
    assert verifier.verify(opened).party_id == case["sender"]


@pytest.mark.parametrize("case", ENVELOPES, ids=ENVELOPE_IDS)
def test_an_envelope_vector_is_made_again_byte_for_byte(case: dict[str, Any]) -> None:
    message = _message(case)
    assert encode(message).hex() == case["body"]
    sealed = seal(_header(case), message, authenticator=_authenticator(case))
    assert sealed.hex() == case["envelope"]


class _Channel:
    """Stands for an aio-pika channel: keeps what is published on it."""

    def __init__(self) -> None:
        self.published: list[dict[str, Any]] = []

    async def get_underlay_channel(self) -> _Channel:
        return self

    async def basic_publish(self, body: bytes, **arguments: Any) -> None:
        self.published.append({"body": body, **arguments})


def publish(exchange: str, routing_key: str, outgoing: OutgoingMessage, mandatory: bool) -> Any:
    """What the RabbitMQ transport hands the AMQP client for ``outgoing``."""
    channel = _Channel()
    publisher = ConfirmedPublisher(publish_timeout=5, nack_retry=1)
    publisher._channel = channel  # type: ignore[assignment]
    asyncio.run(publisher.publish(exchange, routing_key, outgoing, mandatory=mandatory))
    (published,) = channel.published
    return published


def amqp_properties(properties: Any) -> dict[str, Any]:
    """AMQP basic properties by their AMQP names, as the vectors hold them."""
    return {
        "content_type": properties.content_type,
        "delivery_mode": properties.delivery_mode,
        "message_id": properties.message_id,
        "type": properties.message_type,
        "correlation_id": properties.correlation_id,
        "reply_to": properties.reply_to,
        "expiration": properties.expiration,
        "app_id": properties.app_id,
        "headers": properties.headers,
    }


def assert_properties(properties: Any, wanted: dict[str, Any]) -> None:
    """The published properties are the vector's; headers are a table, in any order."""
    actual = amqp_properties(properties)
    assert actual["headers"] == wanted["headers"]
    assert_same(_without(actual, "headers"), _without(wanted, "headers"))


def _route(case: dict[str, Any]) -> tuple[str, str, bool]:
    """Where the code's topology sends a message of this case."""
    topology = Topology(load("envelopes.json")["namespace"])
    if case["message_type"] == "heartbeat":
        return topology.presence_exchange.name, "", False
    if case["message_type"].endswith("_request"):
        return topology.requests_exchange.name, case["recipient"], True
    return topology.replies_exchange.name, topology.researcher_queue(case["recipient"]).name, False


@pytest.mark.parametrize("case", ENVELOPES, ids=ENVELOPE_IDS)
def test_an_envelope_vector_is_published_with_its_amqp_properties_and_headers(
    case: dict[str, Any],
) -> None:
    amqp = case["amqp"]
    wanted = amqp["properties"]
    expiration = None if wanted["expiration"] is None else int(wanted["expiration"]) / 1000
    outgoing = frame(
        _header(case),
        _message(case),
        authenticator=_authenticator(case),
        reply_to=wanted["reply_to"],
        expiration=expiration,
        persistent=wanted["delivery_mode"] == 2,
    )
    assert (amqp["exchange"], amqp["routing_key"], amqp["mandatory"]) == _route(case)
    published = publish(amqp["exchange"], amqp["routing_key"], outgoing, amqp["mandatory"])
    assert published["body"].hex() == case["envelope"]
    assert (published["exchange"], published["routing_key"], published["mandatory"]) == (
        amqp["exchange"],
        amqp["routing_key"],
        amqp["mandatory"],
    )
    assert_properties(published["properties"], wanted)


# --- numpy arrays ------------------------------------------------------------------------------

ARRAYS = cases("ndarray.json")
ARRAY_IDS = ids("ndarray.json", "name")


@pytest.mark.parametrize("case", ARRAYS, ids=ARRAY_IDS)
def test_an_array_vector_decodes_to_its_dtype_shape_and_data(case: dict[str, Any]) -> None:
    decoded = decode(bytes.fromhex(case["encoded"]))
    assert isinstance(decoded, np.ndarray)
    assert_same(decoded, array(case["descr"], case["shape"], case["data"]))
    assert np.lib.format.dtype_to_descr(decoded.dtype) == as_descr(case["descr"])
    if "values" in case:
        assert decoded.tolist() == case["values"]
    encoded = bytes.fromhex(case["encoded"])
    meta = bytes.fromhex(case["meta"])
    assert encoded[:1] == b"\xc9" and encoded[5] == load("ndarray.json")["extension_type"]
    assert int.from_bytes(encoded[1:5], "big") == len(encoded) - 6
    assert encoded[6:8] == len(meta).to_bytes(2, "big") and encoded[8 : 8 + len(meta)] == meta
    assert encoded[8 + len(meta) :].hex() == case["data"]
    assert msgpack.unpackb(meta) == [case["descr"], case["shape"]]


@pytest.mark.parametrize("case", ARRAYS, ids=ARRAY_IDS)
def test_an_array_vector_is_encoded_again_byte_for_byte(case: dict[str, Any]) -> None:
    value = array(case["descr"], case["shape"], case["data"])
    if case["order"] == "F":
        value = np.asfortranarray(value)
        assert value.ndim < 2 or not value.flags.c_contiguous
    assert encode(value).hex() == case["encoded"]


@pytest.mark.parametrize(
    "case", cases("ndarray.json", "invalid"), ids=ids("ndarray.json", "name", "invalid")
)
def test_an_invalid_array_vector_is_refused(case: dict[str, Any]) -> None:
    with pytest.raises(DecodeError):
        decode(bytes.fromhex(case["encoded"]))


# --- chunked transfers -------------------------------------------------------------------------


async def _settle(*_: Any) -> None:
    return None


def _chunk_delivery(chunk: dict[str, Any], body: bytes | None = None) -> Delivery:
    properties = chunk["properties"]
    return Delivery(
        body=bytes.fromhex(chunk["body"]) if body is None else body,
        message_id=properties["message_id"],
        type=properties["type"],
        correlation_id=properties["correlation_id"],
        reply_to=properties["reply_to"],
        headers=dict(properties["headers"]),
        redelivered=False,
        exchange=load("chunking.json")["amqp"]["exchange"],
        routing_key=load("chunking.json")["amqp"]["routing_key"],
        _ack=_settle,
        _reject=_settle,
    )


def test_a_large_envelope_is_published_in_the_vector_chunks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    vector = load("chunking.json")
    transfer_id = vector["chunks"][0]["properties"]["headers"]["x-transfer-id"]
    monkeypatch.setattr(
        chunking_module, "uuid", SimpleNamespace(uuid4=lambda: uuid.UUID(transfer_id))
    )
    whole = vector["amqp"]["properties"]
    source = next(c for c in ENVELOPES if c["message_type"] == vector["source"]["message_type"])
    assert source["envelope"] == vector["source"]["envelope"]
    assert vector["amqp"]["properties"] == source["amqp"]["properties"]
    outgoing = frame(
        _header(source),
        _message(source),
        authenticator=_authenticator(source),
        reply_to=whole["reply_to"],
        expiration=int(whole["expiration"]) / 1000,
        persistent=whole["delivery_mode"] == 2,
    )
    chunks: list[OutgoingMessage] = []

    async def collect(message: OutgoingMessage) -> None:
        chunks.append(message)

    asyncio.run(publish_chunked(collect, outgoing, Chunking(chunk_size=vector["chunk_size"])))
    chunks.sort(key=lambda chunk: int(chunk.headers["x-chunk-index"]))
    assert len(chunks) == len(vector["chunks"])
    amqp = vector["amqp"]
    for chunk, wanted in zip(chunks, vector["chunks"], strict=True):
        published = publish(amqp["exchange"], amqp["routing_key"], chunk, amqp["mandatory"])
        assert published["body"].hex() == wanted["body"]
        assert_properties(published["properties"], wanted["properties"])


def test_the_vector_chunks_follow_the_documented_layout() -> None:
    vector = load("chunking.json")
    whole = bytes.fromhex(vector["source"]["envelope"])
    size = vector["chunk_size"]
    assert vector["transfer_hash"] == "xxh3-128"
    assert xxhash.xxh3_128(whole).hexdigest() == vector["transfer_digest"]
    assert len(vector["chunks"]) == math.ceil(len(whole) / size)
    last = len(vector["chunks"]) - 1
    for index, chunk in enumerate(vector["chunks"]):
        headers = chunk["properties"]["headers"]
        wanted = vector["amqp"]["properties"]["headers"] | {
            "x-transfer-id": headers["x-transfer-id"],
            "x-chunk-index": index,
            "x-chunk-count": len(vector["chunks"]),
            "x-chunk-size": size,
            "x-transfer-size": len(whole),
            "x-transfer-hash": vector["transfer_hash"],
        }
        if index == last:  # the digest of the whole goes with the last chunk only
            wanted["x-transfer-digest"] = vector["transfer_digest"]
        assert headers == wanted
        assert len(headers["x-transfer-id"]) == 32
        assert bytes.fromhex(chunk["body"]) == whole[index * size : (index + 1) * size]
        assert {k: v for k, v in chunk["properties"].items() if k != "headers"} == {
            k: v for k, v in vector["amqp"]["properties"].items() if k != "headers"
        }


def _reassemble(deliveries: Iterator[Delivery]) -> Delivery:
    async def run() -> Delivery:
        reassembler = Reassembler(Chunking(chunk_size=load("chunking.json")["chunk_size"]))
        whole = None
        for delivery in deliveries:
            whole = await reassembler.feed(delivery) or whole
        assert whole is not None
        return whole

    return asyncio.run(run())


def test_the_vector_chunks_reassemble_in_any_order() -> None:
    vector = load("chunking.json")
    whole = _reassemble(_chunk_delivery(chunk) for chunk in reversed(vector["chunks"]))
    assert TRANSFER_ERROR not in whole.headers
    assert bytes(whole.body).hex() == vector["source"]["envelope"]


def test_a_corrupted_vector_chunk_fails_the_transfer() -> None:
    vector = load("chunking.json")
    corrupted = vector["corrupted"]
    deliveries = (
        _chunk_delivery(chunk, bytes.fromhex(corrupted["body"]))
        if chunk["index"] == corrupted["index"]
        else _chunk_delivery(chunk)
        for chunk in vector["chunks"]
    )
    assert _reassemble(deliveries).headers[TRANSFER_ERROR] == corrupted["error"]


# --- errors ------------------------------------------------------------------------------------

ERRORS = cases("errors.json")
ERROR_IDS = ids("errors.json", "name")


class _Recorder:
    def __init__(self) -> None:
        self.published: list[tuple[str, str, bool, OutgoingMessage]] = []

    async def publish(
        self, exchange: str, routing_key: str, message: OutgoingMessage, *, mandatory: bool = False
    ) -> None:
        self.published.append((exchange, routing_key, mandatory, message))


def _node_answer(
    case: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> tuple[str, str, bool, OutgoingMessage]:
    """What the node's dispatcher publishes for the case's request, its randomness and clock
    fixed to the case's."""
    random = bytes.fromhex(case["node_random"])
    now = from_json(case["node_now"])
    monkeypatch.setattr(envelope_module, "os", SimpleNamespace(urandom=lambda n: random[:n]))
    monkeypatch.setattr(envelope_module, "time", SimpleNamespace(time=lambda: case["node_time"]))
    monkeypatch.setattr(refusals_module, "utc_now", lambda: now)
    monkeypatch.setattr(dispatch_module, "utc_now", lambda: now)
    node = identity("hospital-a")
    security: Security | None = None
    if case["node_security"]:
        security = Security(node, trust_of(node.party_id))
        security.verifier = Verifier(node, trust_of(node.party_id), clock=lambda: case["node_time"])
    recorder = _Recorder()
    counters = {"errors": 0, "handled": 0, "duplicates": 0}
    with ReplyStore(tmp_path / "replies.sqlite") as store:
        topology = Topology(load("errors.json")["namespace"])
        transport = cast(Transport, recorder)
        replier = ReplySender(
            node.party_id, "Hospital A", transport, topology, security, store, counters
        )
        # Only handlers use the context, and these requests never reach a handler.
        dispatcher = Dispatcher(
            HANDLERS,
            cast(NodeContext, None),
            replier,
            security,
            max_message_size=2**32,
            heavy_concurrency=1,
            counters=counters,
        )
        request = case["request"]["properties"]
        delivery = Delivery(
            body=bytes.fromhex(case["request"]["body"]),
            message_id=request["message_id"],
            type=request["type"],
            correlation_id=request["correlation_id"],
            reply_to=request["reply_to"],
            headers={},
            redelivered=request["redelivered"],
            exchange="",
            routing_key=node.party_id,
            _ack=_settle,
            _reject=_settle,
        )
        asyncio.run(dispatcher.handle(delivery))
    (answer,) = recorder.published
    return answer


@pytest.mark.parametrize("case", ERRORS, ids=ERROR_IDS)
def test_the_node_answers_an_unusable_request_as_the_error_vector_says(
    case: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    exchange, routing_key, mandatory, outgoing = _node_answer(case, monkeypatch, tmp_path)
    reply = case["reply"]
    assert (exchange, routing_key, mandatory) == (
        reply["exchange"],
        reply["routing_key"],
        reply["mandatory"],
    )
    opened = unseal(outgoing.body_bytes())
    message = decode(bytes(opened.body))
    expected = from_json(reply["message"])
    # The error's text is for a person: everything else is the contract.
    assert_same(_without(message, "message"), _without(expected, "message"))
    assert message["code"] == case["code"]
    assert_same(
        _without(opened.header.as_dict(), "body_digest"),
        _without(from_json(reply["header"]), "body_digest"),
    )
    assert opened.header.recipient == case["recipient"]
    published = publish(exchange, routing_key, outgoing, mandatory)
    assert_properties(published["properties"], reply["properties"])
    if message["message"] == expected["message"]:
        assert outgoing.body_bytes().hex() == reply["envelope"]


@pytest.mark.parametrize("case", ERRORS, ids=ERROR_IDS)
def test_an_error_vector_is_sealed_again_and_verified(case: dict[str, Any]) -> None:
    reply = case["reply"]
    node = identity("hospital-a")
    header = EnvelopeHeader(**(from_json(reply["header"]) | AUTH_FIELDS))
    message = MESSAGE_TYPES["error"].model_validate(from_json(reply["message"]))
    assert encode(message).hex() == reply["body"]
    authenticator = (
        Security(node, trust_of(node.party_id)).authenticator_for(header.recipient)
        if case["node_security"]
        else None
    )
    assert seal(header, message, authenticator=authenticator).hex() == reply["envelope"]
    opened = unseal(bytes.fromhex(reply["envelope"]))
    assert opened.header_bytes.hex() == reply["header_bytes"]
    if reply["auth_alg"] is None:
        assert opened.auth is None and reply["auth"] is None
    elif reply["auth_alg"] == "ed25519":
        public_key(node.party_id).verify(bytes.fromhex(reply["auth"]), opened.header_bytes)
    else:
        key = mac_key(node.party_id, header.recipient)
        assert hmac.digest(key, opened.header_bytes, "sha256").hex() == reply["auth"]
    if reply["auth_alg"] is not None:
        assert reply["key_id"] == node.fingerprint
        verifier = Verifier(
            identity("alice"), trust_of("alice"), clock=lambda: opened.header.created_at
        )
        verdict = case["researcher_verifier"]
        if verdict["accepts"]:
            assert verifier.verify(opened).party_id == node.party_id
        else:
            with pytest.raises(SecurityError) as refused:
                verifier.verify(opened)
            assert getattr(refused.value, "code", None) is ErrorCode[verdict["refusal"]]


def test_error_vectors_cover_both_unknown_type_answers() -> None:
    codes = {case["name"]: case["code_name"] for case in ERRORS}
    assert codes["unknown type tag"] == "INVALID_MESSAGE"
    assert codes["a known type the node does not handle"] == "UNKNOWN_MESSAGE_TYPE"


def test_typed_json_round_trips_timestamps() -> None:
    stamp = from_json({"$timestamp": {"seconds": 1700000000, "nanoseconds": 125000000}})
    assert isinstance(stamp, datetime) and stamp.timestamp() == 1700000000.125
    assert encode(stamp) == msgpack.packb(msgpack.Timestamp(1700000000, 125000000))
