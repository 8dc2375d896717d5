"""``researcher identity``, ``researcher trust`` and ``researcher provision``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import anyio
import typer

from broker_net.admin.management import ManagementClient
from broker_net.admin.provisioning import provision
from broker_net.cli_errors import read_settings
from broker_net.crypto.cli import identity_commands
from broker_net.errors import TransportError
from researcher.cli.broker import management_error
from researcher.settings import ResearcherSettings


def _locate() -> tuple[str, Path, Path]:
    settings = read_settings(ResearcherSettings)
    return (
        settings.researcher_id,
        settings.data_dir / "identity",
        settings.trusted_nodes or settings.data_dir / "trusted-nodes",
    )


identity_app, trust_app = identity_commands("researcher", _locate)


def provision_command(
    node: Annotated[list[str], typer.Option("--node", help="A node id; repeat for each node.")],
    vhost: Annotated[str, typer.Option(help="The vhost to create and grant.")] = "broker-net",
    passwords_file: Annotated[
        Path, typer.Option(help="Where the new users' passwords are written (mode 0600).")
    ] = Path("broker-users.env"),
) -> None:
    """Create a RabbitMQ user for this researcher and one per node, each allowed only what
    its role needs, through the management API (admin credentials from
    BROKER_NET_RESEARCHER_MANAGEMENT_USER / _PASSWORD). Passwords are written to a file,
    never printed; a file that cannot be written is refused before any user is made."""
    settings = read_settings(ResearcherSettings)

    async def run() -> dict[str, str]:
        async with ManagementClient(
            settings.management_url, settings.management_user, settings.management_password
        ) as management:
            try:
                return await provision(
                    management, vhost, settings.topology, researcher_id=settings.researcher_id,
                    nodes=node,
                )  # fmt: skip
            except TransportError as exc:
                raise management_error(exc, settings) from None

    existed = passwords_file.exists()
    descriptor = os.open(passwords_file, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        passwords = anyio.run(run)
    except BaseException:
        os.close(descriptor)
        if not existed:
            passwords_file.unlink(missing_ok=True)
        raise
    os.ftruncate(descriptor, 0)
    with os.fdopen(descriptor, "w") as out:
        for user, password in passwords.items():
            out.write(f"{user}={password}\n")
    for user in passwords:
        typer.echo(f"user {user} on vhost {vhost}")
    typer.echo(f"passwords written to {passwords_file} (mode 0600): hand each to its owner")
