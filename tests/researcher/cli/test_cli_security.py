"""Identity, trust and provisioning commands."""

from __future__ import annotations

import stat
import uuid
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from typer.testing import CliRunner

from node_agent.cli import app as node_app
from researcher.cli.main import app as researcher_app
from tests.conftest import ADMIN, MANAGEMENT_URL

runner = CliRunner()


def test_operators_exchange_identities(tmp_path: Path) -> None:
    node_env = {"BROKER_NET_NODE_NODE_ID": "n1", "BROKER_NET_NODE_DATA_DIR": str(tmp_path / "n1")}
    researcher_env = {
        "BROKER_NET_RESEARCHER_RESEARCHER_ID": "alice",
        "BROKER_NET_RESEARCHER_DATA_DIR": str(tmp_path / "alice"),
    }
    shown = runner.invoke(node_app, ["identity", "show"], env=node_env)
    assert shown.exit_code == 0, shown.output
    line = shown.stdout.strip().splitlines()[0]
    key_file = tmp_path / "n1" / "identity" / "identity.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    added = runner.invoke(researcher_app, ["trust", "add", line], env=researcher_env)
    assert added.exit_code == 0, added.output
    listed = runner.invoke(researcher_app, ["trust", "list"], env=researcher_env)
    fingerprint = line.split('"fingerprint": "')[1].split('"')[0]
    assert f"n1\tnode\t{fingerprint}" in listed.stdout

    refused = runner.invoke(researcher_app, ["trust", "add", "not an identity"], env=researcher_env)
    assert refused.exit_code == 2


@pytest.mark.rabbitmq
def test_provision_creates_one_user_per_party(tmp_path: Path) -> None:
    vhost = f"test-cli-{uuid.uuid4().hex[:8]}"
    researcher_id = f"r{uuid.uuid4().hex[:8]}"
    passwords = tmp_path / "users.env"
    result = runner.invoke(
        researcher_app,
        ["provision", "--node", f"{researcher_id}-n1", "--node", f"{researcher_id}-n2",
         "--vhost", vhost, "--passwords-file", str(passwords)],
        env={"BROKER_NET_RESEARCHER_RESEARCHER_ID": researcher_id},
    )  # fmt: skip
    with httpx.Client(base_url=MANAGEMENT_URL + "/api", auth=ADMIN) as api:
        try:
            assert result.exit_code == 0, result.output
            assert stat.S_IMODE(passwords.stat().st_mode) == 0o600
            users = dict(line.split("=", 1) for line in passwords.read_text().splitlines())
            assert set(users) == {researcher_id, f"{researcher_id}-n1", f"{researcher_id}-n2"}
            assert all(password not in result.output for password in users.values())
            granted = api.get(f"/vhosts/{quote(vhost, safe='')}/permissions").json()
            assert {entry["user"] for entry in granted} >= set(users)
        finally:
            api.delete(f"/vhosts/{quote(vhost, safe='')}")
            for user in (researcher_id, f"{researcher_id}-n1", f"{researcher_id}-n2"):
                api.delete(f"/users/{quote(user, safe='')}")
