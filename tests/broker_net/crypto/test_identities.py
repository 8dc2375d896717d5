"""Identities, key files, public identity lines and the trust store."""

from __future__ import annotations

import hashlib
import json
import re
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from broker_net.codes import ErrorCode
from broker_net.crypto.identities import (
    BadSignatureError,
    Identity,
    KeyFileError,
    PublicIdentity,
    TrustStore,
    UnknownKeyError,
)

FINGERPRINT = re.compile(r"^([0-9a-f]{4}:){7}[0-9a-f]{4}$")


def _fixed_identity() -> Identity:
    return Identity(
        "hospital-a",
        "node",
        Ed25519PrivateKey.from_private_bytes(bytes(range(32))),
        X25519PrivateKey.from_private_bytes(bytes(range(32, 64))),
    )


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- key files ---------------------------------------------------------------------------------


def test_load_or_create_writes_owner_only_key_files(tmp_path: Path) -> None:
    folder = tmp_path / "keys" / "node"
    identity = Identity.load_or_create(folder, "hospital-a", "node")

    assert _mode(folder) == 0o700
    assert _mode(folder / "identity.key") == 0o600
    public_line = (folder / "identity.pub").read_text()
    assert PublicIdentity.from_text(public_line) == identity.public()
    assert {p.name for p in folder.iterdir()} == {"identity.key", "identity.pub"}


def test_load_or_create_loads_the_same_keys_again(tmp_path: Path) -> None:
    first = Identity.load_or_create(tmp_path / "keys", "hospital-a", "node")
    second = Identity.load_or_create(tmp_path / "keys", "hospital-a", "node")

    assert second.public() == first.public()
    assert second.fingerprint == first.fingerprint


def test_public_file_always_matches_the_key(tmp_path: Path) -> None:
    identity = Identity.load_or_create(tmp_path, "hospital-a", "node")
    public_file = tmp_path / "identity.pub"
    public_file.write_text(Identity.generate("hospital-a", "node").public().to_text())
    Identity.load_or_create(tmp_path, "hospital-a", "node")
    assert PublicIdentity.from_text(public_file.read_text()) == identity.public()

    public_file.unlink()
    Identity.load_or_create(tmp_path, "hospital-a", "node")
    assert PublicIdentity.from_text(public_file.read_text()) == identity.public()


def test_every_party_gets_its_own_keys(tmp_path: Path) -> None:
    a = Identity.load_or_create(tmp_path / "a", "hospital-a", "node")
    b = Identity.load_or_create(tmp_path / "b", "hospital-a", "node")

    assert a.public().signing_key != b.public().signing_key
    assert a.public().agreement_key != b.public().agreement_key


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_key_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    Identity.load_or_create(tmp_path, "hospital-a", "node")
    key_file = tmp_path / "identity.key"
    key_file.chmod(mode)

    with pytest.raises(KeyFileError, match="chmod 600") as caught:
        Identity.load_or_create(tmp_path, "hospital-a", "node")
    assert caught.value.code is ErrorCode.SECURITY_ERROR


def test_key_file_of_another_party_is_refused(tmp_path: Path) -> None:
    Identity.load_or_create(tmp_path, "hospital-a", "node")

    with pytest.raises(KeyFileError, match="hospital-a"):
        Identity.load_or_create(tmp_path, "hospital-b", "node")
    with pytest.raises(KeyFileError, match="researcher"):
        Identity.load_or_create(tmp_path, "hospital-a", "researcher")


@pytest.mark.parametrize("content", ["", "not json", "{}", '{"party_id": "hospital-a"}'])
def test_malformed_key_file_is_refused(tmp_path: Path, content: str) -> None:
    key_file = tmp_path / "identity.key"
    key_file.write_text(content)
    key_file.chmod(0o600)

    with pytest.raises(KeyFileError, match="not a broker-net key file"):
        Identity.load_or_create(tmp_path, "hospital-a", "node")


# --- public identities -------------------------------------------------------------------------


def test_fingerprint_is_stable_and_formatted() -> None:
    identity = _fixed_identity()
    signing_key = identity.public().signing_key
    digest = hashlib.sha256(signing_key).hexdigest()

    assert FINGERPRINT.match(identity.fingerprint)
    assert identity.fingerprint.replace(":", "") == digest[:32]
    assert identity.fingerprint == "5647:5aa7:5463:474c:0285:df5d:bf2b:cab7"
    assert _fixed_identity().fingerprint == identity.fingerprint


@given(st.text(min_size=1, max_size=60), st.sampled_from(["researcher", "node"]))
def test_public_identity_text_round_trip(party_id: str, role: str) -> None:
    identity = Identity.generate(party_id, role)  # type: ignore[arg-type]
    line = identity.public().to_text()

    assert "\n" not in line
    assert PublicIdentity.from_text(line) == identity.public()
    assert json.loads(line)["fingerprint"] == identity.fingerprint


def test_public_identity_with_a_foreign_agreement_key_is_refused() -> None:
    fields = json.loads(Identity.generate("hospital-a", "node").public().to_text())
    fields["x25519"] = json.loads(Identity.generate("mallory", "node").public().to_text())["x25519"]

    with pytest.raises(BadSignatureError) as caught:
        PublicIdentity.from_text(json.dumps(fields))
    assert caught.value.code is ErrorCode.BAD_SIGNATURE


@pytest.mark.parametrize(("field", "value"), [("party_id", "hospital-b"), ("role", "researcher")])
def test_public_identity_with_a_changed_id_or_role_is_refused(field: str, value: str) -> None:
    fields = json.loads(Identity.generate("hospital-a", "node").public().to_text())
    fields[field] = value

    with pytest.raises(BadSignatureError):
        PublicIdentity.from_text(json.dumps(fields))


def test_public_identity_with_a_wrong_fingerprint_is_refused() -> None:
    fields = json.loads(Identity.generate("hospital-a", "node").public().to_text())
    fields["fingerprint"] = "0000:0000:0000:0000:0000:0000:0000:0000"

    with pytest.raises(KeyFileError, match="fingerprint"):
        PublicIdentity.from_text(json.dumps(fields))


@pytest.mark.parametrize(
    "line",
    [
        "",
        "[1, 2]",
        '{"party_id": "a", "role": "node"}',
        '{"party_id": "a", "role": "admin", "ed25519": "", "x25519": "", "signature": ""}',
        '{"party_id": "a", "role": "node", "ed25519": "AAAA", "x25519": "AAAA", "signature": "!"}',
    ],
)
def test_malformed_public_identity_is_refused(line: str) -> None:
    with pytest.raises(KeyFileError):
        PublicIdentity.from_text(line)


def test_key_agreement_is_symmetric_and_refuses_low_order_keys() -> None:
    a, b = Identity.generate("a", "node"), Identity.generate("b", "researcher")

    assert a.exchange(b.public().agreement_key) == b.exchange(a.public().agreement_key)
    with pytest.raises(BadSignatureError):
        a.exchange(bytes(32))


# --- trust store -------------------------------------------------------------------------------


def test_trust_file_round_trip(tmp_path: Path) -> None:
    identities = [Identity.generate(f"hospital-{i}", "node").public() for i in range(3)]
    trust_file = tmp_path / "nodes.pub"
    trust_file.write_text("# the nodes of the study\n\n" + TrustStore(tuple(identities)).to_text())

    loaded = TrustStore.load(trust_file)

    assert len(loaded) == 3
    assert sorted(loaded, key=lambda i: i.party_id) == identities
    for identity in identities:
        assert loaded.get(identity.party_id) == identity
        assert loaded.find(identity.fingerprint) == identity


def test_trust_folder_reads_every_pub_file(tmp_path: Path) -> None:
    researcher = Identity.load_or_create(tmp_path / "researcher", "lab", "researcher")
    other = Identity.generate("lab-2", "researcher")
    trust = tmp_path / "trusted"
    trust.mkdir()
    (trust / "lab.pub").write_text((tmp_path / "researcher" / "identity.pub").read_text())
    (trust / "lab-2.pub").write_text(other.public().to_text())
    (trust / "notes.txt").write_text("ignored")

    loaded = TrustStore.load(trust)

    assert {identity.party_id for identity in loaded} == {"lab", "lab-2"}
    assert loaded.get("lab") == researcher.public()


def test_trust_file_error_names_the_line(tmp_path: Path) -> None:
    trust_file = tmp_path / "nodes.pub"
    good = Identity.generate("hospital-a", "node").public().to_text()
    trust_file.write_text(f"{good}\nnot an identity\n")

    with pytest.raises(KeyFileError, match=r"nodes\.pub:2"):
        TrustStore.load(trust_file)


def test_trust_store_add_get_remove() -> None:
    identity = Identity.generate("hospital-a", "node").public()
    store = TrustStore()
    store.add(identity)
    store.add(identity)

    assert "hospital-a" in store
    assert store.get("hospital-a") == identity
    store.remove("hospital-a")
    store.remove("hospital-a")
    assert "hospital-a" not in store
    assert store.find(identity.fingerprint) is None
    with pytest.raises(UnknownKeyError) as caught:
        store.get("hospital-a")
    assert caught.value.code is ErrorCode.UNKNOWN_KEY


def test_trust_store_refuses_a_second_key_for_a_party() -> None:
    store = TrustStore((Identity.generate("hospital-a", "node").public(),))
    impostor = Identity.generate("hospital-a", "node").public()

    with pytest.raises(KeyFileError, match="already trusted"):
        store.add(impostor)
    assert store.find(impostor.fingerprint) is None


def test_trust_store_refuses_an_identity_with_a_bad_self_signature() -> None:
    genuine = Identity.generate("hospital-a", "node").public()
    forged = PublicIdentity(
        genuine.party_id,
        genuine.role,
        genuine.signing_key,
        Identity.generate("mallory", "node").public().agreement_key,
        genuine.signature,
    )

    with pytest.raises(BadSignatureError):
        TrustStore().add(forged)
