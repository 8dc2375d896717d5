"""Identity and trust commands shared by the ``node-agent`` and ``researcher`` CLIs.

Their errors are one line each (see :mod:`broker_net.cli_errors`): an unreadable file, a key
file that is unsafe or malformed, or a line that is no public identity exit with code 2.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from broker_net.cli_errors import USAGE, CliError, guard
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
    @guard
    def show() -> None:
        """Print the public identity line to hand to the other parties' operators, and the
        fingerprint to read to them over another channel. Creates the keys on first use."""
        party_id, identity_dir, _ = locate()
        identity = Identity.load_or_create(identity_dir, party_id, role)
        typer.echo(identity.public().to_text())
        typer.echo(f"fingerprint: {identity.fingerprint}", err=True)

    @trust_app.command("add")
    @guard
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
                reason = (exc.strerror or str(exc)).lower()
                raise CliError(
                    f"cannot read {source}: {reason}; give a .pub file or the identity line",
                    USAGE,
                ) from None
        try:
            identity = PublicIdentity.from_text(text)
        except (SecurityError, ValueError) as exc:
            raise CliError(f"not a valid public identity: {exc}", USAGE) from None
        filed = trust(identity, trust_dir)
        typer.echo(f"trusted {identity.party_id} ({identity.fingerprint}) in {filed}")

    @trust_app.command("list")
    @guard
    def listing() -> None:
        """List the trusted parties and their fingerprints."""
        _, _, trust_dir = locate()
        store = TrustStore.load(trust_dir) if trust_dir.exists() else TrustStore()
        for line in store.to_text().splitlines():
            identity = PublicIdentity.from_text(line)
            typer.echo(f"{identity.party_id}\t{identity.role}\t{identity.fingerprint}")

    return identity_app, trust_app
