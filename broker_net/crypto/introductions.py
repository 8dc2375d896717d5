"""Explicit trust between parties: each operator hands the others a public identity line.

A node trusts the researchers whose ``.pub`` files sit in its ``trusted-researchers`` folder; a
researcher trusts the nodes in its ``trusted-nodes`` folder. Nothing is trusted on first use.
``node-agent identity show`` / ``researcher identity show`` print the line to hand over and
``... trust add`` files it; :func:`introduce` does both for parties on one machine (demos, tests).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from broker_net.crypto.identities import Identity, PublicIdentity
from broker_net.envelope import Role


def trust(identity: PublicIdentity, trust_dir: Path) -> Path:
    """File ``identity`` in ``trust_dir`` as ``<party_id>.pub``; return the file's path."""
    trust_dir.mkdir(parents=True, exist_ok=True)
    path = trust_dir / f"{identity.party_id}.pub"
    path.write_text(identity.to_text() + "\n")
    return path


def introduce(
    researcher_id: str, researcher_dir: Path, nodes: Mapping[str, Path]
) -> dict[str, str]:
    """Make a researcher and nodes on this machine trust each other.

    Identities are created on first use in ``<folder>/identity``; the researcher's public line
    goes to each ``<node folder>/trusted-researchers`` and each node's to
    ``<researcher folder>/trusted-nodes``.

    Returns:
        Fingerprints by party id.
    """
    researcher = _load(researcher_dir, researcher_id, "researcher")
    fingerprints = {researcher_id: researcher.fingerprint}
    for node_id, folder in nodes.items():
        node = _public(folder, node_id, "node")
        trust(researcher.public(), folder / "trusted-researchers")
        trust(node, researcher_dir / "trusted-nodes")
        fingerprints[node_id] = node.fingerprint
    return fingerprints


def _load(folder: Path, party_id: str, role: Role) -> Identity:
    return Identity.load_or_create(folder / "identity", party_id, role)


def _public(folder: Path, party_id: str, role: Role) -> PublicIdentity:
    """A party's public identity: read from its ``identity.pub`` when it exists (the private
    key is never opened then), else created."""
    published = folder / "identity" / "identity.pub"
    if published.exists():
        return PublicIdentity.from_text(published.read_text().strip())
    return _load(folder, party_id, role).public()
