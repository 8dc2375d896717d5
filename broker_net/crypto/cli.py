"""Identity and trust commands shared by the ``node-agent`` and ``researcher`` CLIs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from broker_net.crypto.identities import Identity, PublicIdentity, TrustStore
from broker_net.crypto.introductions import trust
from broker_net.envelope import Role
from broker_net.errors import SecurityError


def identity_commands(
    role: Role, locate: Callable[[], tuple[str, Path, Path]]
) -> tuple[typer.Typer, typer.Typer]:
    """Build the ``identity`` and ``trust`` sub-commands for a party.

    Args:
        role: the party's role.
        locate: returns (party id, identity folder, trust folder) from the settings.
    """
    other = "researchers" if role == "node" else "nodes"
    identity_app = typer.Typer(help="This party's identity keys.", no_args_is_help=True)
    trust_app = typer.Typer(
        help=f"The {other} this party trusts (nothing is trusted on first use).",
        no_args_is_help=True,
    )

    @identity_app.command("show")
    def show() -> None:
        """Print the public identity line to hand to the other parties' operators, and the
        fingerprint to read to them over another channel. Creates the keys on first use."""
        party_id, identity_dir, _ = locate()
        identity = Identity.load_or_create(identity_dir, party_id, role)
        typer.echo(identity.public().to_text())
        typer.echo(f"fingerprint: {identity.fingerprint}", err=True)

    @trust_app.command("add")
    def add(
        source: Annotated[str, typer.Argument(help="A .pub file, or the identity line itself.")],
    ) -> None:
        """Trust a party from its public identity line (after checking its fingerprint)."""
        _, _, trust_dir = locate()
        text = source.strip()
        if not text.startswith("{"):  # a file name, not the identity line itself
            try:
                text = Path(source).read_text().strip()
            except OSError as exc:
                typer.echo(f"cannot read {source}: {exc}", err=True)
                raise typer.Exit(2) from exc
        try:
            identity = PublicIdentity.from_text(text)
        except (SecurityError, ValueError) as exc:
            typer.echo(f"not a valid public identity: {exc}", err=True)
            raise typer.Exit(2) from exc
        filed = trust(identity, trust_dir)
        typer.echo(f"trusted {identity.party_id} ({identity.fingerprint}) in {filed}")

    @trust_app.command("list")
    def listing() -> None:
        """List the trusted parties and their fingerprints."""
        _, _, trust_dir = locate()
        store = TrustStore.load(trust_dir) if trust_dir.exists() else TrustStore()
        for line in store.to_text().splitlines():
            identity = PublicIdentity.from_text(line)
            typer.echo(f"{identity.party_id}\t{identity.role}\t{identity.fingerprint}")

    return identity_app, trust_app
