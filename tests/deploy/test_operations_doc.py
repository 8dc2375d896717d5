"""docs/operations.md names every setting there is, so an operator can find each one."""

from __future__ import annotations

import re

from node_agent.settings import NodeSettings
from researcher.settings import ResearcherSettings
from tests.deploy.compose import ENV_EXAMPLE, ROOT, read_env_file

DOC = ROOT / "docs" / "operations.md"


def documented() -> set[str]:
    return set(re.findall(r"`([A-Z][A-Z0-9_]+)`", DOC.read_text()))


def test_every_setting_is_documented() -> None:
    variables = {f"BROKER_NET_NODE_{name.upper()}" for name in NodeSettings.model_fields} | {
        f"BROKER_NET_RESEARCHER_{name.upper()}" for name in ResearcherSettings.model_fields
    }
    assert variables - documented() == set(), "add them to docs/operations.md, Configuration"


def test_every_compose_variable_is_documented() -> None:
    assert set(read_env_file(ENV_EXAMPLE)) - documented() == set()


def test_the_make_targets_it_names_exist() -> None:
    targets = set(re.findall(r"^([a-z-]+):", (ROOT / "Makefile").read_text(), re.MULTILINE))
    named = set(re.findall(r"`make ([a-z-]+)", DOC.read_text()))
    assert named and named <= targets
