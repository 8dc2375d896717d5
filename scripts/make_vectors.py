"""Write the wire test vectors of docs/vectors/ from fixed keys, ids, times and values.

Run it only when the wire changes on purpose, together with a new protocol version::

    .venv/bin/python scripts/make_vectors.py

tests/broker_net/test_vectors.py checks the code against the files this writes; it never runs
this script. Every value below is fixed, so two runs write the same bytes.

The JSON files hold bytes as lowercase hex. Values that JSON cannot carry are tagged objects
(see docs/protocol.md, "Test vectors"): ``{"$bin": hex}``, ``{"$timestamp": {"seconds",
"nanoseconds"}}`` and ``{"$ndarray": {"descr", "shape", "data"}}``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast
from unittest import mock

import msgpack
import numpy as np
import xxhash
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

import broker_net.chunking as chunking_module
import broker_net.envelope as envelope_module
import node_agent.dispatch as dispatch_module
import node_agent.refusals as refusals_module
from broker_net.chunking import Chunking, publish_chunked
from broker_net.codec import decode, encode
from broker_net.codes import ErrorCode, PreprocStep, PreprocType, TrainingPlanStatus
from broker_net.crypto.authentication import Authenticators, Security, Verifier
from broker_net.crypto.identities import Identity, PublicIdentity, TrustStore
from broker_net.envelope import EnvelopeHeader, Role, seal, unseal
from broker_net.frames import frame
from broker_net.messages import (
    MESSAGE_TYPES,
    ApprovalReply,
    ApprovalRequest,
    CancelReply,
    CancelRequest,
    DatasetInfo,
    ErrorMessage,
    FAReply,
    FARequest,
    Heartbeat,
    ListReply,
    ListRequest,
    PingReply,
    PingRequest,
    PreprocReply,
    PreprocRequest,
    SecaggReply,
    SecaggRequest,
    TrainingPlanStatusReply,
    TrainingPlanStatusRequest,
    TrainReply,
    TrainRequest,
)
from broker_net.prediction_messages import PredictReply, PredictRequest
from broker_net.progress_messages import PROGRESS_EXPIRATION, ProgressMessage
from broker_net.topology import Topology
from broker_net.transport import Delivery, OutgoingMessage, Transport
from broker_net.version import PROTOCOL_VERSION
from node_agent.analytics import statistics_for_request
from node_agent.context import NodeContext
from node_agent.datasets import Table
from node_agent.dispatch import Dispatcher
from node_agent.handlers import HANDLERS
from node_agent.plans import compute_plan_id
from node_agent.replier import ReplySender
from node_agent.replies import ReplyStore

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "vectors"
NAMESPACE = "broker_net"
TOPOLOGY = Topology(NAMESPACE)
RESEARCHER, NODE, OTHER_NODE = "alice", "hospital-a", "hospital-b"
PARTIES = ((RESEARCHER, "researcher"), (NODE, "node"), (OTHER_NODE, "node"))
BASE_TIME = 1700000000.25
"""``created_at`` of the first envelope; each case adds whole seconds."""
REQUEST_EXPIRATION = 3600.0
"""The ``expiration`` (seconds) the vectors' requests are framed with."""
MAC_LABEL = b"broker-net/mac/v1"
IDENTITY_LABEL = b"broker-net/identity/v1\x00"
CHUNK_SIZE = 300


# --- typed JSON --------------------------------------------------------------------------------


def to_json(value: Any) -> Any:
    """A decoded msgpack value as JSON, with bytes, timestamps and arrays tagged."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("the vectors hold finite floats only")
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$bin": bytes(value).hex()}
    if isinstance(value, datetime):
        stamp = msgpack.Timestamp.from_datetime(value)
        return {"$timestamp": {"seconds": stamp.seconds, "nanoseconds": stamp.nanoseconds}}
    if isinstance(value, np.ndarray):
        descr = np.lib.format.dtype_to_descr(value.dtype)
        return {
            "$ndarray": {
                "descr": _descr_json(descr),
                "shape": list(value.shape),
                "data": np.ascontiguousarray(value).tobytes().hex(),
            }
        }
    if isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise ValueError("the vectors' maps have str keys only")
        return {key: to_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(item) for item in value]
    raise TypeError(f"no JSON form for {type(value).__name__}")


def _descr_json(descr: Any) -> Any:
    """numpy's descriptor with its tuples as lists, as msgpack and JSON carry it."""
    if isinstance(descr, list | tuple):
        return [_descr_json(part) for part in descr]
    return descr


def hexed(data: bytes | bytearray | memoryview | None) -> str | None:
    return None if data is None else bytes(data).hex()


# --- parties -----------------------------------------------------------------------------------


def seed(party: str, kind: str) -> bytes:
    """A fixed private key: SHA-256 of a label naming the party and the key kind."""
    return hashlib.sha256(f"broker-net test vectors/{party}/{kind}".encode()).digest()


def identity(party: str, role: Any) -> Identity:
    return Identity(
        party,
        role,
        Ed25519PrivateKey.from_private_bytes(seed(party, "ed25519")),
        X25519PrivateKey.from_private_bytes(seed(party, "x25519")),
    )


IDENTITIES = {party: identity(party, role) for party, role in PARTIES}


def trust_of(party: str) -> TrustStore:
    """What ``party`` trusts: every other party of the vectors."""
    return TrustStore(tuple(i.public() for p, i in IDENTITIES.items() if p != party))


def identity_message(public: PublicIdentity) -> bytes:
    packed: bytes = msgpack.packb(
        [public.party_id, public.role, public.signing_key, public.agreement_key]
    )
    return IDENTITY_LABEL + packed


def identities_file() -> dict[str, Any]:
    cases = []
    for party, role in PARTIES:
        own = IDENTITIES[party]
        public = own.public()
        cases.append(
            {
                "party_id": party,
                "role": role,
                "ed25519_private": seed(party, "ed25519").hex(),
                "x25519_private": seed(party, "x25519").hex(),
                "ed25519_public": public.signing_key.hex(),
                "x25519_public": public.agreement_key.hex(),
                "fingerprint_input": public.signing_key.hex(),
                "fingerprint_sha256": hashlib.sha256(public.signing_key).hexdigest(),
                "fingerprint": public.fingerprint,
                "key_id": public.fingerprint,
                "self_signed_bytes": identity_message(public).hex(),
                "self_signature": public.signature.hex(),
                "identity_line": public.to_text(),
            }
        )
    line = json.loads(IDENTITIES[NODE].public().to_text())
    other = json.loads(IDENTITIES[OTHER_NODE].public().to_text())
    without_fingerprint = {k: v for k, v in line.items() if k != "fingerprint"}
    reordered = dict(reversed(list(line.items())))
    lines = [
        {
            "name": "as written by to_text",
            "line": json.dumps(line),
            "accepted": True,
            "party_id": NODE,
        },
        {
            "name": "fingerprint omitted (it is optional when reading)",
            "line": json.dumps(without_fingerprint),
            "accepted": True,
            "party_id": NODE,
        },
        {
            "name": "fields in another order, without spaces",
            "line": json.dumps(reordered, separators=(",", ":")),
            "accepted": True,
            "party_id": NODE,
        },
        {
            "name": "party id changed: the self-signature no longer verifies",
            "line": json.dumps(line | {"party_id": "hospital-c"}),
            "accepted": False,
            "error": ErrorCode.BAD_SIGNATURE.name,
        },
        {
            "name": "role changed",
            "line": json.dumps(line | {"role": "researcher"}),
            "accepted": False,
            "error": ErrorCode.BAD_SIGNATURE.name,
        },
        {
            "name": "another identity's agreement key",
            "line": json.dumps(line | {"x25519": other["x25519"]}),
            "accepted": False,
            "error": ErrorCode.BAD_SIGNATURE.name,
        },
        {
            "name": "fingerprint of another key",
            "line": json.dumps(line | {"fingerprint": other["fingerprint"]}),
            "accepted": False,
            "error": ErrorCode.SECURITY_ERROR.name,
        },
        {
            "name": "a key of the wrong length",
            "line": json.dumps(line | {"x25519": other["x25519"][:-4] + "===="}),
            "accepted": False,
            "error": ErrorCode.SECURITY_ERROR.name,
        },
    ]
    return {
        "description": (
            "Identities built from fixed private keys: the raw 32-byte Ed25519 seed and X25519 "
            "private key of each party, its public keys, fingerprint (also its envelopes' "
            "key_id), the bytes its self-signature covers, the signature and its public "
            "identity line (what `trust add` reads). `lines` are identity lines a reader must "
            "accept or refuse; `error` names the ErrorCode of the refusal."
        ),
        "protocol_version": PROTOCOL_VERSION,
        "identity_label": IDENTITY_LABEL.hex(),
        "cases": cases,
        "lines": lines,
    }


# --- pairwise MAC keys -------------------------------------------------------------------------


def mac_info(sender: PublicIdentity, recipient: PublicIdentity) -> bytes:
    packed: bytes = msgpack.packb(
        [sender.party_id, sender.fingerprint, recipient.party_id, recipient.fingerprint]
    )
    return MAC_LABEL + packed


def mac_key(sender: str, recipient: str) -> bytes:
    own, peer = IDENTITIES[sender], IDENTITIES[recipient].public()
    secret = own.exchange(peer.agreement_key)
    info = mac_info(own.public(), peer)
    return HKDF(SHA256(), 32, salt=MAC_LABEL, info=info).derive(secret)


PROBE = b"broker-net test vectors: any header bytes"


def mac_keys_file() -> dict[str, Any]:
    cases = []
    for sender, recipient in (
        (RESEARCHER, NODE),
        (NODE, RESEARCHER),
        (RESEARCHER, OTHER_NODE),
        (OTHER_NODE, RESEARCHER),
    ):
        own, peer = IDENTITIES[sender], IDENTITIES[recipient].public()
        secret = own.exchange(peer.agreement_key)
        # The same secret from the other side: X25519 is symmetric.
        private = X25519PrivateKey.from_private_bytes(seed(recipient, "x25519"))
        other_side = private.exchange(X25519PublicKey.from_public_bytes(own.public().agreement_key))
        assert other_side == secret
        key = mac_key(sender, recipient)
        authenticator = Authenticators(own, trust_of(sender)).for_recipient(recipient)
        assert authenticator.sign(PROBE) == hmac.digest(key, PROBE, "sha256")
        cases.append(
            {
                "sender": sender,
                "recipient": recipient,
                "sender_fingerprint": own.fingerprint,
                "recipient_fingerprint": peer.fingerprint,
                "shared_secret": secret.hex(),
                "hkdf_hash": "SHA-256",
                "salt": MAC_LABEL.hex(),
                "info": mac_info(own.public(), peer).hex(),
                "length": 32,
                "key": key.hex(),
                "key_id": own.fingerprint,
                "probe": PROBE.hex(),
                "probe_mac": hmac.digest(key, PROBE, "sha256").hex(),
            }
        )
    return {
        "description": (
            "Pairwise MAC keys, one per direction. shared_secret is X25519(the sender's X25519 "
            "private key, the recipient's X25519 public key), the same from both sides; key is "
            "HKDF-SHA256(shared_secret, salt, info, length). The sender MACs with it and the "
            "recipient verifies with it; key_id in the envelope is the sender's fingerprint. "
            "probe_mac is HMAC-SHA256(key, probe)."
        ),
        "protocol_version": PROTOCOL_VERSION,
        "mac_label": MAC_LABEL.hex(),
        "cases": cases,
    }


# --- messages ----------------------------------------------------------------------------------


def stamp(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def request_id(number: int) -> str:
    return f"request_{number:032x}"


EXPERIMENT = "experiment-1"
DATASET = "dataset_" + hashlib.sha256(b"cohort").hexdigest()[:32]
PLAN_SOURCE = "from training_plans import LogisticRegressionPlan\n"
PLAN_ID = compute_plan_id(PLAN_SOURCE)
RECEIVED, REPLIED = stamp(1700000000.125), stamp(1700000001.5)
TABLE = Table(
    ["age", "bmi"],
    np.array(
        [[34.0, 22.5], [51.0, 27.25], [47.0, np.nan], [np.nan, 31.0], [62.0, 24.75], [29.0, 19.5]],
    ),
)


def reply_fields(number: int) -> dict[str, Any]:
    return {
        "request_id": request_id(number),
        "researcher_id": RESEARCHER,
        "node_id": NODE,
        "node_name": "Hospital A",
        "received_at": RECEIVED,
        "replied_at": REPLIED,
    }


def messages() -> list[Any]:
    """One message of every type, with fixed values."""
    fa_request = FARequest(
        request_id=request_id(3),
        researcher_id=RESEARCHER,
        experiment_id=EXPERIMENT,
        fa_id="fa-1",
        dataset_id=DATASET,
        stats_args={
            "age": {
                "mean": True,
                "min": True,
                "max": True,
                "histogram": {"bins": [0.0, 40.0, 80.0]},
                "quantiles": {"q": [0.5], "sketch_size": 4},
            },
            "bmi": {"count": True, "std": {"ddof": 1}},
        },
    )
    coef = np.array([[0.5, -0.25, 0.125]])
    params_in = {"coef": coef, "intercept": np.zeros(1)}
    params_out = {"coef": coef * 0.5, "intercept": np.array([0.0625])}
    secagg_blob = hashlib.sha256(b"an encrypted seed share").digest()
    return [
        PingRequest(request_id=request_id(1), researcher_id=RESEARCHER),
        PingReply(**reply_fields(1), agent_version="0.1.0"),
        ListRequest(request_id=request_id(2), researcher_id=RESEARCHER, tags=["cohort"]),
        ListReply(
            **reply_fields(2),
            datasets=[
                DatasetInfo(
                    dataset_id=DATASET,
                    name="cohort",
                    tags=["cohort"],
                    format="csv",
                    shape=[6, 3],
                    columns=["age", "bmi", "smoker"],
                    dtypes={"age": "int64", "bmi": "float64", "smoker": "str"},
                    description="a small cohort",
                )
            ],
        ),
        fa_request,
        FAReply(
            **reply_fields(3),
            experiment_id=EXPERIMENT,
            fa_id="fa-1",
            output=statistics_for_request(TABLE, fa_request),
        ),
        PreprocRequest(
            request_id=request_id(4),
            researcher_id=RESEARCHER,
            experiment_id=EXPERIMENT,
            dataset_id=DATASET,
            preproc_type=PreprocType.STANDARDIZE,
            preproc_step=PreprocStep.FIT,
            preproc_id="scale-1",
            preproc_args={"mean": {"age": 44.6, "bmi": 25.0}, "std": {"age": 13.3, "bmi": 4.5}},
        ),
        PreprocReply(
            **reply_fields(4),
            experiment_id=EXPERIMENT,
            preproc_id="scale-1",
            preproc_output={"columns": ["age", "bmi"]},
            state_id="state_" + "5" * 32,
        ),
        TrainRequest(
            request_id=request_id(5),
            researcher_id=RESEARCHER,
            experiment_id=EXPERIMENT,
            round=1,
            training_plan=PLAN_SOURCE,
            training_plan_class="LogisticRegressionPlan",
            params=params_in,
            training_args={"epochs": 1, "batch_size": 16, "learning_rate": 0.1, "seed": 1},
            model_args={"n_features": 3},
            dataset_id=DATASET,
            model_version=2,
        ),
        TrainReply(
            **reply_fields(5),
            experiment_id=EXPERIMENT,
            round=1,
            success=True,
            dataset_id=DATASET,
            params=params_out,
            sample_size=100,
            timing={"training": 0.5, "evaluation": 0.125},
            metrics={"loss": 0.625},
            model_version=2,
        ),
        TrainingPlanStatusRequest(
            request_id=request_id(6),
            researcher_id=RESEARCHER,
            experiment_id=EXPERIMENT,
            training_plan=PLAN_SOURCE,
        ),
        TrainingPlanStatusReply(
            **reply_fields(6),
            experiment_id=EXPERIMENT,
            success=True,
            approval_obligation=True,
            status=TrainingPlanStatus.APPROVED,
            training_plan_id=PLAN_ID,
        ),
        ApprovalRequest(
            request_id=request_id(7),
            researcher_id=RESEARCHER,
            description="logistic regression",
            training_plan=PLAN_SOURCE,
        ),
        ApprovalReply(**reply_fields(7), success=True, training_plan_id=PLAN_ID),
        SecaggRequest(
            request_id=request_id(8),
            researcher_id=RESEARCHER,
            secagg_id="secagg_" + "8" * 32,
            experiment_id=EXPERIMENT,
            step="deliver",
            shares={OTHER_NODE: secagg_blob},
        ),
        SecaggReply(
            **reply_fields(8),
            secagg_id="secagg_" + "8" * 32,
            experiment_id=EXPERIMENT,
            step="deliver",
        ),
        Heartbeat(
            node_id=NODE,
            node_name="Hospital A",
            agent_version="0.1.0",
            sent_at=stamp(1700000016.0),
            interval=2.0,
            datasets=[DATASET],
        ),
        ErrorMessage(
            request_id=request_id(9),
            researcher_id=RESEARCHER,
            node_id=NODE,
            node_name="Hospital A",
            code=ErrorCode.PLAN_NOT_APPROVED,
            message="the training plan is not approved on this node",
            details={"training_plan_id": PLAN_ID, "status": "Pending"},
            received_at=RECEIVED,
            replied_at=REPLIED,
        ),
        CancelRequest(
            request_id=request_id(10),
            researcher_id=RESEARCHER,
            target_request_id=request_id(5),
        ),
        CancelReply(
            **reply_fields(10),
            target_request_id=request_id(5),
            cancelled=True,
            state="running",
        ),
        ProgressMessage(
            request_id=request_id(5),
            researcher_id=RESEARCHER,
            node_id=NODE,
            node_name="Hospital A",
            experiment_id=EXPERIMENT,
            round=2,
            sequence=3,
            sent_at=stamp(1700000030.5),
            values={"iteration": 40.0, "loss": 0.25},
        ),
        PredictRequest(
            request_id=request_id(11),
            researcher_id=RESEARCHER,
            experiment_id="job_" + "b" * 32 + ".predict",
            job_id="job_" + "a" * 32,
            model="train/best-2",
            round=2,
            training_plan=PLAN_SOURCE,
            training_plan_class="LogisticRegressionPlan",
            params=params_out,
            model_args={"n_features": 3},
            dataset_id=DATASET,
        ),
        PredictReply(
            **reply_fields(11),
            experiment_id="job_" + "b" * 32 + ".predict",
            success=True,
            dataset_id=DATASET,
            prediction_dataset_id="dataset_" + hashlib.sha256(b"predictions").hexdigest()[:32],
            n_rows=100,
            summary={"kind": "classes", "class_counts": {"0": 38, "1": 62}},
        ),
    ]


def nonce(label: str) -> bytes:
    return hashlib.sha256(f"broker-net test vectors/nonce/{label}".encode()).digest()[:16]


def message_id(number: int) -> str:
    return f"msg_{number:032x}"


class Route:
    """Who sends a message to whom, and how it is published."""

    role: Role

    def __init__(self, message: Any) -> None:
        kind = message.type
        if kind == "heartbeat":
            self.sender, self.role, self.recipient = NODE, "node", "*"
            self.exchange, self.routing_key, self.mandatory = (
                TOPOLOGY.presence_exchange.name,
                "",
                False,
            )
            self.reply_to, self.persistent = None, False
            self.expiration: float | None = float(math.ceil(3 * message.interval))
        elif kind.endswith("_request"):
            self.sender, self.role, self.recipient = RESEARCHER, "researcher", NODE
            self.exchange, self.routing_key, self.mandatory = (
                TOPOLOGY.requests_exchange.name,
                NODE,
                True,
            )
            self.reply_to = TOPOLOGY.researcher_queue(RESEARCHER).name
            self.persistent, self.expiration = True, REQUEST_EXPIRATION
        else:
            self.sender, self.role, self.recipient = NODE, "node", RESEARCHER
            self.exchange = TOPOLOGY.replies_exchange.name
            self.routing_key = TOPOLOGY.researcher_queue(RESEARCHER).name
            self.mandatory, self.reply_to, self.persistent, self.expiration = (
                False,
                None,
                True,
                None,
            )
            if kind == "progress":
                self.persistent, self.expiration = False, PROGRESS_EXPIRATION


def amqp_properties(outgoing: OutgoingMessage) -> dict[str, Any]:
    """The AMQP basic properties the RabbitMQ transport publishes ``outgoing`` with."""
    return {
        "content_type": "application/msgpack",
        "delivery_mode": 2 if outgoing.persistent else 1,
        "message_id": outgoing.message_id,
        "type": outgoing.type,
        "correlation_id": outgoing.correlation_id,
        "reply_to": outgoing.reply_to,
        "expiration": (
            None if outgoing.expiration is None else str(int(outgoing.expiration * 1000))
        ),
        "app_id": "broker-net",
        "headers": outgoing.headers,
    }


def envelope_case(number: int, message: Any) -> dict[str, Any]:
    route = Route(message)
    header = EnvelopeHeader.for_message(
        message, sender_id=route.sender, sender_role=route.role, recipient=route.recipient
    )
    header = EnvelopeHeader(
        **header.as_dict()
        | {
            "message_id": message_id(number),
            "created_at": BASE_TIME + number,
            "nonce": nonce(message.type),
        }
    )
    authenticator = Authenticators(IDENTITIES[route.sender], trust_of(route.sender))
    signer = authenticator.for_recipient(route.recipient)
    body = encode(message)
    sealed = seal(header, message, authenticator=signer)
    outgoing = frame(
        header,
        message,
        authenticator=signer,
        reply_to=route.reply_to,
        expiration=route.expiration,
        persistent=route.persistent,
    )
    assert outgoing.body_bytes() == sealed
    opened = unseal(sealed)
    verifier = Verifier(
        IDENTITIES[RESEARCHER if route.recipient == "*" else route.recipient],
        trust_of(RESEARCHER if route.recipient == "*" else route.recipient),
        clock=lambda: header.created_at,
    )
    assert verifier.verify(opened).party_id == route.sender
    if signer.algorithm == "hmac-sha256-x25519":
        key_ref: dict[str, Any] = {
            "mac_key": {"sender": route.sender, "recipient": route.recipient}
        }
    else:
        key_ref = {"signer": route.sender}
    return {
        "message_type": message.type,
        "sender": route.sender,
        "sender_role": route.role,
        "recipient": route.recipient,
        "verified_by": RESEARCHER if route.recipient == "*" else route.recipient,
        "message": to_json(decode(body)),
        "body": body.hex(),
        "body_sha256": hashlib.sha256(body).hexdigest(),
        "header": to_json(opened.header.as_dict()),
        "header_bytes": opened.header_bytes.hex(),
        "auth_alg": signer.algorithm,
        "key_id": signer.key_id,
        **key_ref,
        "auth": hexed(opened.auth),
        "envelope": sealed.hex(),
        "amqp": {
            "exchange": route.exchange,
            "routing_key": route.routing_key,
            "mandatory": route.mandatory,
            "properties": amqp_properties(outgoing),
        },
    }


def envelopes_file() -> dict[str, Any]:
    cases = [envelope_case(number, message) for number, message in enumerate(messages(), 1)]
    assert {case["message_type"] for case in cases} == set(MESSAGE_TYPES)
    return {
        "description": (
            "One authenticated envelope per message type, from fixed messages, message ids, "
            "nonces and created_at. Requests go from researcher alice to node hospital-a and "
            "replies and errors back, each MACed (hmac-sha256-x25519) under the mac_keys.json "
            "key of its direction; the heartbeat is signed (ed25519) by hospital-a for '*'. "
            "`message` is the body map in wire order, `body` its msgpack bytes, `header` the "
            "envelope header map as sealed and `header_bytes` its exact bytes (what auth "
            "covers), `envelope` the whole AMQP body, `amqp` what it is published with. "
            f"Requests are framed with an expiration of {REQUEST_EXPIRATION:g} s; progress "
            f"goes like a reply but not persistent, with an expiration of "
            f"{PROGRESS_EXPIRATION:g} s."
        ),
        "protocol_version": PROTOCOL_VERSION,
        "namespace": NAMESPACE,
        "cases": cases,
    }


# --- numpy arrays ------------------------------------------------------------------------------


def ndarray_cases() -> list[tuple[str, np.ndarray[Any, Any]]]:
    fortran = np.asfortranarray(np.arange(6, dtype="<f8").reshape(2, 3))
    return [
        ("float32 vector", np.array([1.0, 2.0], dtype="<f4")),
        ("float64 matrix, C order", np.arange(6, dtype="<f8").reshape(2, 3) / 4),
        ("float64 matrix, Fortran order (written in C order)", fortran / 4),
        ("int64 scalar (0-d)", np.array(-7, dtype="<i8")),
        ("empty float32 with 0 rows and 3 columns", np.zeros((0, 3), dtype="<f4")),
        ("empty int32 vector", np.zeros(0, dtype="<i4")),
        ("bool", np.array([True, False, True])),
        ("uint8 3-D", np.arange(8, dtype="|u1").reshape(2, 2, 2)),
        ("int16", np.array([-2, 300], dtype="<i2")),
        ("uint64", np.array([0, 2**64 - 1], dtype="<u8")),
        ("float16", np.array([0.5, -1.5], dtype="<f2")),
        ("float64, big-endian", np.array([1.5, -2.0], dtype=">f8")),
        ("complex64", np.array([1 + 2j], dtype="<c8")),
        ("datetime64[ns]", np.array(["2024-01-02T03:04:05"], dtype="<M8[ns]")),
        ("bytes, 3 wide", np.array([b"ab", b"xyz"], dtype="|S3")),
        ("unicode, 2 wide", np.array(["hé", "z"], dtype="<U2")),
        (
            "structured",
            np.array([(1, 2.5), (-3, 4.0)], dtype=[("x", "<i4"), ("y", ">f8")]),
        ),
        ("structured with a sub-array", np.zeros(1, dtype=[("pos", "<f4", (3,))])),
        ("non-contiguous slice (written contiguous)", np.arange(10, dtype="<i4")[::3]),
    ]


def ndarray_file() -> dict[str, Any]:
    cases = []
    for name, array in ndarray_cases():
        encoded = encode(array)
        decoded = decode(encoded)
        assert decoded.dtype == array.dtype and decoded.shape == array.shape
        assert decoded.tobytes() == np.ascontiguousarray(array).tobytes()
        meta_length = int.from_bytes(encoded[6:8], "big")
        case: dict[str, Any] = {
            "name": name,
            "descr": _descr_json(np.lib.format.dtype_to_descr(array.dtype)),
            "shape": list(array.shape),
            "order": "F" if array.flags.f_contiguous and not array.flags.c_contiguous else "C",
            "data": np.ascontiguousarray(array).tobytes().hex(),
            "meta": encoded[8 : 8 + meta_length].hex(),
            "encoded": encoded.hex(),
        }
        if array.dtype.kind in "biuf" and array.dtype.names is None:
            case["values"] = array.tolist()
        cases.append(case)
    good = encode(np.array([1.0, 2.0], dtype="<f4"))
    invalid = [
        {
            "name": "data one byte short",
            "encoded": (good[:1] + (16).to_bytes(4, "big") + good[5:-1]).hex(),
        },
        {"name": "unknown extension type 2", "encoded": (good[:5] + b"\x02" + good[6:]).hex()},
        {
            "name": "object dtype",
            "encoded": _ext(msgpack.packb(["|O", [1]]) + bytes(8)).hex(),
        },
        {
            "name": "negative dimension",
            "encoded": _ext(msgpack.packb(["<f4", [-1]])).hex(),
        },
    ]
    for case in invalid:
        try:
            decode(bytes.fromhex(case["encoded"]))
        except Exception:
            continue
        raise AssertionError(f"{case['name']} decoded")
    return {
        "description": (
            "numpy arrays as msgpack extension type 1: `encoded` is the whole ext32 object "
            "(C9, u32 length, type 01, u16 meta length, meta = msgpack [descr, shape], data in "
            "C order). `order` is the memory layout of the array that was encoded; `data` is "
            "always C order. `values` (simple dtypes only) are the elements, row-major. "
            "`invalid` are encodings a reader must refuse."
        ),
        "protocol_version": PROTOCOL_VERSION,
        "extension_type": 1,
        "cases": cases,
        "invalid": invalid,
    }


def _ext(payload_after_meta_length: bytes) -> bytes:
    """An ext32 of type 1 around a meta that is the first msgpack object of the payload."""
    unpacker = msgpack.Unpacker()
    unpacker.feed(payload_after_meta_length)
    unpacker.unpack()
    meta_length: int = unpacker.tell()
    payload = meta_length.to_bytes(2, "big") + payload_after_meta_length
    return b"\xc9" + len(payload).to_bytes(4, "big") + b"\x01" + payload


# --- chunked transfers -------------------------------------------------------------------------

TRANSFER_ID = uuid.UUID("00112233-4455-6677-8899-aabbccddeeff")


@contextmanager
def fixed_transfer_id() -> Iterator[None]:
    with mock.patch.object(chunking_module, "uuid", SimpleNamespace(uuid4=lambda: TRANSFER_ID)):
        yield


def chunked(outgoing: OutgoingMessage, chunk_size: int) -> list[OutgoingMessage]:
    published: list[OutgoingMessage] = []

    async def publish(message: OutgoingMessage) -> None:
        published.append(message)

    with fixed_transfer_id():
        asyncio.run(publish_chunked(publish, outgoing, Chunking(chunk_size=chunk_size)))
    return sorted(published, key=lambda m: int(m.headers.get("x-chunk-index", 0)))


def chunking_file(envelopes: dict[str, Any]) -> dict[str, Any]:
    case = next(c for c in envelopes["cases"] if c["message_type"] == "train_request")
    number = envelopes["cases"].index(case) + 1
    message = messages()[number - 1]
    route = Route(message)
    header = EnvelopeHeader(**unseal(bytes.fromhex(case["envelope"])).header.as_dict())
    header = EnvelopeHeader(
        **header.as_dict() | {"auth_alg": None, "key_id": None, "body_digest": None}
    )
    signer = Authenticators(IDENTITIES[route.sender], trust_of(route.sender)).for_recipient(
        route.recipient
    )
    outgoing = frame(
        header,
        message,
        authenticator=signer,
        reply_to=route.reply_to,
        expiration=route.expiration,
        persistent=route.persistent,
    )
    whole = outgoing.body_bytes()
    assert whole.hex() == case["envelope"]
    chunks = chunked(outgoing, CHUNK_SIZE)
    return {
        "description": (
            "The train_request envelope of envelopes.json published with a chunk size of "
            f"{CHUNK_SIZE} bytes: each chunk is an AMQP message with the whole message's "
            "properties and headers plus x-transfer-id, x-chunk-index, x-chunk-count, "
            "x-chunk-size, x-transfer-size and x-transfer-hash (xxh3-128), and on the last "
            "chunk only x-transfer-digest, the XXH3-128 (hex, big-endian as xxhash prints it) "
            "of the whole envelope; its body is "
            "the slice [index * x-chunk-size, min((index + 1) * x-chunk-size, "
            "x-transfer-size)) of the envelope. The transfer id is fixed here; senders draw a "
            "fresh one (32 hex digits) per transfer. `corrupted` is chunk 1 with one byte "
            "changed: the reassembled transfer fails its digest (TRANSFER_CORRUPTED)."
        ),
        "protocol_version": PROTOCOL_VERSION,
        "chunk_size": CHUNK_SIZE,
        "source": {"message_type": "train_request", "envelope": whole.hex()},
        "transfer_hash": "xxh3-128",
        "transfer_digest": xxhash.xxh3_128(whole).hexdigest(),
        "amqp": case["amqp"] | {"properties": amqp_properties(outgoing)},
        "chunks": [
            {
                "index": int(chunk.headers["x-chunk-index"]),
                "properties": amqp_properties(chunk),
                "body": chunk.body_bytes().hex(),
            }
            for chunk in chunks
        ],
        "corrupted": {
            "index": 1,
            "body": _flip(chunks[1].body_bytes()).hex(),
            "error": ErrorCode.TRANSFER_CORRUPTED.name,
        },
    }


def _flip(data: bytes) -> bytes:
    return data[:10] + bytes([data[10] ^ 0x01]) + data[11:]


# --- errors ------------------------------------------------------------------------------------


class Recorder:
    """A transport that keeps what is published."""

    def __init__(self) -> None:
        self.published: list[tuple[str, str, bool, OutgoingMessage]] = []

    async def publish(
        self, exchange: str, routing_key: str, message: OutgoingMessage, *, mandatory: bool = False
    ) -> None:
        self.published.append((exchange, routing_key, mandatory, message))


async def _settle(*_: Any) -> None:
    return None


def delivery(body: bytes, **properties: Any) -> Delivery:
    fields: dict[str, Any] = {
        "body": body,
        "message_id": None,
        "type": None,
        "correlation_id": None,
        "reply_to": None,
        "headers": {},
        "redelivered": False,
        "exchange": TOPOLOGY.requests_exchange.name,
        "routing_key": NODE,
        "_ack": _settle,
        "_reject": _settle,
    }
    return Delivery(**(fields | properties))


ERROR_RANDOM = bytes.fromhex("e0" * 16 + "e1" * 16)
"""What os.urandom(32) gives while an error case runs: the reply's message id, then nonce."""
ERROR_TIME = 1700000100.5
ERROR_NOW = stamp(1700000100.25)


@contextmanager
def fixed_node_clock() -> Iterator[None]:
    """The node's random ids and clocks, fixed (the node draws them itself)."""
    with (
        mock.patch.object(envelope_module, "os", SimpleNamespace(urandom=lambda n: ERROR_RANDOM)),
        mock.patch.object(envelope_module, "time", SimpleNamespace(time=lambda: ERROR_TIME)),
        mock.patch.object(refusals_module, "utc_now", lambda: ERROR_NOW),
        mock.patch.object(dispatch_module, "utc_now", lambda: ERROR_NOW),
    ):
        yield


def node_answer(
    request: Delivery, *, security: bool, verify_at: float
) -> tuple[str, str, bool, OutgoingMessage]:
    """What the node's dispatcher publishes in answer to ``request``."""
    recorder = Recorder()
    node_security: Security | None = None
    if security:
        node_security = Security(IDENTITIES[NODE], trust_of(NODE))
        node_security.verifier = Verifier(IDENTITIES[NODE], trust_of(NODE), clock=lambda: verify_at)
    with tempfile.TemporaryDirectory() as folder:
        store = ReplyStore(Path(folder) / "replies.sqlite")
        counters = {"errors": 0, "handled": 0, "duplicates": 0}
        transport = cast(Transport, recorder)
        replier = ReplySender(
            NODE, "Hospital A", transport, TOPOLOGY, node_security, store, counters
        )
        with fixed_node_clock():
            # Only handlers use the context, and these requests never reach a handler.
            dispatcher = Dispatcher(
                HANDLERS,
                cast(NodeContext, None),
                replier,
                node_security,
                max_message_size=2**32,
                heavy_concurrency=1,
                counters=counters,
            )
            asyncio.run(dispatcher.handle(request))
        store.close()
    (answer,) = recorder.published
    return answer


def sealed_request(
    message: Any,
    number: int,
    *,
    tamper: Callable[[bytes], bytes] | None = None,
    type_tag: str | None = None,
) -> Delivery:
    """A request from alice to hospital-a, MACed, as the node receives it."""
    header = EnvelopeHeader(
        message_id=message_id(100 + number),
        sender_id=RESEARCHER,
        sender_role="researcher",
        recipient=NODE,
        message_type=type_tag or message["type"],
        request_id=message["request_id"],
        created_at=ERROR_TIME - 1.0,
        nonce=nonce(f"error request {number}"),
    )
    signer = Authenticators(IDENTITIES[RESEARCHER], trust_of(RESEARCHER)).for_recipient(NODE)
    body = seal(header, message, authenticator=signer)
    if tamper is not None:
        body = tamper(body)
    return delivery(
        body,
        message_id=header.message_id,
        type=header.message_type,
        correlation_id=header.request_id,
        reply_to=TOPOLOGY.researcher_queue(RESEARCHER).name,
    )


def _flip_auth(data: bytes) -> bytes:
    opened = unseal(data)
    start = 1 + len(opened.header_bytes)
    # auth is a bin8 of 32 bytes: marker, length, then the MAC.
    return data[: start + 2] + bytes([data[start + 2] ^ 0x80]) + data[start + 3 :]


def error_case(name: str, description: str, request: Delivery, *, security: bool) -> dict[str, Any]:
    exchange, routing_key, mandatory, outgoing = node_answer(
        request, security=security, verify_at=ERROR_TIME
    )
    sealed = outgoing.body_bytes()
    opened = unseal(sealed)
    body = bytes(opened.body)
    reply = decode(body)
    recipient = opened.header.recipient
    accepted: bool
    refusal: str | None = None
    if opened.header.auth_alg is None:
        accepted = True  # a researcher without security reads it as it is
    else:
        verifier = Verifier(
            IDENTITIES[RESEARCHER], trust_of(RESEARCHER), clock=lambda: opened.header.created_at
        )
        try:
            verifier.verify(opened)
            accepted = True
        except Exception as exc:
            accepted, refusal = False, getattr(exc, "code", ErrorCode.SECURITY_ERROR).name
    return {
        "name": name,
        "description": description,
        "node_security": security,
        "request": {
            "properties": {
                "message_id": request.message_id,
                "type": request.type,
                "correlation_id": request.correlation_id,
                "reply_to": request.reply_to,
                "redelivered": request.redelivered,
            },
            "body": bytes(request.body).hex(),
        },
        "node_random": ERROR_RANDOM.hex(),
        "node_time": ERROR_TIME,
        "node_now": to_json(ERROR_NOW),
        "code": reply["code"],
        "code_name": ErrorCode(reply["code"]).name,
        "reply": {
            "exchange": exchange,
            "routing_key": routing_key,
            "mandatory": mandatory,
            "properties": amqp_properties(outgoing),
            "message": to_json(reply),
            "body": body.hex(),
            "header": to_json(opened.header.as_dict()),
            "header_bytes": opened.header_bytes.hex(),
            "auth_alg": opened.header.auth_alg,
            "key_id": opened.header.key_id,
            "auth": hexed(opened.auth),
            "envelope": sealed.hex(),
        },
        "recipient": recipient,
        "researcher_verifier": {"accepts": accepted, "refusal": refusal},
    }


def errors_file() -> dict[str, Any]:
    reply_queue = TOPOLOGY.researcher_queue(RESEARCHER).name
    garbage = b"\x92\x01\x02"  # msgpack [1, 2]: not an envelope
    unreadable: dict[str, Any] = {
        "body": garbage,
        "message_id": "msg_" + "a" * 32,
        "type": "ping_request",
        "correlation_id": request_id(20),
        "reply_to": reply_queue,
    }
    unknown = {
        "protocol_version": PROTOCOL_VERSION,
        "request_id": request_id(22),
        "researcher_id": RESEARCHER,
        "type": "status_request",
    }
    ping_reply = PingReply(
        request_id=request_id(23), researcher_id=RESEARCHER, node_id=NODE
    ).model_dump()
    ping = PingRequest(request_id=request_id(24), researcher_id=RESEARCHER).model_dump()
    cases = [
        error_case(
            "unreadable bytes, node security on",
            "Bytes that are not an envelope, with reply_to naming a researcher's reply queue "
            "and correlation_id set. The node answers to that researcher's reply queue, with "
            "the researcher's id as recipient and researcher_id, MACed for it like any reply, "
            "so the researcher accepts it and matches it by request_id.",
            delivery(**unreadable),
            security=True,
        ),
        error_case(
            "unreadable bytes, node security off",
            "The same bytes to a node without security: the same answer, unauthenticated.",
            delivery(**unreadable),
            security=False,
        ),
        error_case(
            "unknown type tag",
            "An authentic envelope whose body's `type` is no message type: INVALID_MESSAGE "
            "(the body does not validate), researcher_id null. `message` is pydantic's text "
            "and varies with its version.",
            sealed_request(unknown, 22),
            security=True,
        ),
        error_case(
            "a known type the node does not handle",
            "An authentic envelope holding a valid ping_reply: UNKNOWN_MESSAGE_TYPE.",
            sealed_request(ping_reply, 23),
            security=True,
        ),
        error_case(
            "bad MAC",
            "A ping_request whose MAC was altered: BAD_SIGNATURE, to the claimed sender's own "
            "reply queue, MACed for it (it is trusted); the body is never decoded.",
            sealed_request(ping, 24, tamper=_flip_auth),
            security=True,
        ),
    ]
    return {
        "description": (
            "What a node sends today when it cannot use a request. The node draws its reply's "
            "message id and nonce from 32 random bytes (`node_random`: message id 'msg_' + hex "
            "of the first 16, nonce the last 16) and reads its clock (`node_time` for "
            "created_at, `node_now` for received_at and replied_at); they are fixed here. "
            "`message` in each error is text for a person, not part of the contract. "
            "`researcher_verifier` says whether the reference researcher, with security on, "
            "accepts the answer."
        ),
        "protocol_version": PROTOCOL_VERSION,
        "namespace": NAMESPACE,
        "cases": cases,
    }


# --- main --------------------------------------------------------------------------------------


def write(name: str, content: dict[str, Any]) -> None:
    path = OUT / name
    path.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    envelopes = envelopes_file()
    write("identities.json", identities_file())
    write("mac_keys.json", mac_keys_file())
    write("envelopes.json", envelopes)
    write("ndarray.json", ndarray_file())
    write("chunking.json", chunking_file(envelopes))
    write("errors.json", errors_file())
    return 0


if __name__ == "__main__":
    sys.exit(main())
