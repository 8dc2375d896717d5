"""docker-compose.yml, the Dockerfile and the env files, checked without a container engine.

``compose-spec.json`` is the Compose specification's JSON schema as shipped in the
``docker-compose`` 1.29.2 wheel on PyPI (``compose/config/compose_spec.json``, Apache-2.0).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from node_agent.settings import NodeSettings
from researcher.settings import ResearcherSettings
from tests.deploy.compose import (
    BROKER_SERVICE,
    COMPOSE_FILE,
    DEFINITIONS_FILE,
    ENV_EXAMPLE,
    ROOT,
    command,
    depends_on,
    env_files,
    environment,
    load_compose,
    mounts,
    password_variable,
    read_env_file,
    references,
    start_order,
)

SCHEMA = Path(__file__).with_name("compose-spec.json")
NODE_PREFIX = "BROKER_NET_NODE_"
RESEARCHER_PREFIX = "BROKER_NET_RESEARCHER_"
SECRET_KEY = re.compile(r"PASS|SECRET|TOKEN|PRIVATE", re.IGNORECASE)
ONE_REFERENCE = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*(:?[-?][^}]*)?\}$")


def example_env() -> dict[str, str]:
    """.env.example with every password filled in, as `make compose-env` does."""
    env = read_env_file(ENV_EXAMPLE)
    return {k: "x" * 16 if k.endswith("_PASSWORD") else v for k, v in env.items()}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose(example_env())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return dict(compose["services"])


def nodes(services: dict[str, Any]) -> dict[str, Any]:
    return {n: s for n, s in services.items() if f"{NODE_PREFIX}NODE_ID" in environment(s)}


def test_compose_file_follows_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft201909Validator(schema)
    errors = [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(compose)
    ]
    assert errors == []


def test_the_services_are_the_broker_provisioning_three_nodes_and_the_researcher(
    services: dict[str, Any],
) -> None:
    assert services[BROKER_SERVICE]["image"] == "rabbitmq:3.13-management"
    assert sorted(nodes(services)) == ["hospital-a", "hospital-b", "hospital-c"]
    ours = [*nodes(services), "researcher"]
    for name in ours:
        assert services[name]["build"] == ".", name
    assert {services[name]["image"] for name in ours} == {"broker-net:latest"}
    provision = services["provision"]["image"]
    assert ":" in provision and not provision.endswith(":latest")
    assert start_order(services)[0] == BROKER_SERVICE


def test_the_broker_has_a_healthcheck_everyone_waits_for(services: dict[str, Any]) -> None:
    healthcheck = services[BROKER_SERVICE]["healthcheck"]
    assert healthcheck["test"][0] == "CMD" and "rabbitmq-diagnostics" in healthcheck["test"]
    assert {"interval", "timeout", "retries"} <= set(healthcheck)
    for name in nodes(services):
        assert depends_on(services[name]) == {
            BROKER_SERVICE: "service_healthy",
            "provision": "service_completed_successfully",
        }
    assert depends_on(services["provision"]) == {BROKER_SERVICE: "service_healthy"}
    researcher = depends_on(services["researcher"])
    assert researcher.pop("provision") == "service_completed_successfully"
    assert researcher == dict.fromkeys(nodes(services), "service_started")


def test_each_node_keeps_its_data_in_a_named_volume_of_its_own(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    declared = set(compose["volumes"])
    used = {
        source for s in services.values() for source, _ in mounts(s) if not source.startswith(".")
    }
    assert used == declared
    data_volumes = {}
    for name, service in nodes(services).items():
        data_dir = environment(service)[f"{NODE_PREFIX}DATA_DIR"]
        (volume,) = [source for source, target in mounts(service) if target == data_dir]
        assert volume in declared
        data_volumes[name] = volume
    assert len(set(data_volumes.values())) == len(data_volumes)
    for service in services.values():
        for source, _ in mounts(service):
            if source.startswith("."):
                assert (ROOT / source).exists(), source


def test_the_researcher_runs_the_demo_on_the_node_folders(services: dict[str, Any]) -> None:
    researcher = services["researcher"]
    argv = command(researcher)
    assert argv[:2] == ["broker-net-demo", "run"]
    external = argv[argv.index("--external-nodes") + 1].split(",")
    root = argv[argv.index("--node-data-root") + 1]
    assert sorted(external) == sorted(nodes(services))
    node_mounts = dict((target, source) for source, target in mounts(researcher))
    for name, service in nodes(services).items():
        data_dir = environment(service)[f"{NODE_PREFIX}DATA_DIR"]
        (own,) = [source for source, target in mounts(service) if target == data_dir]
        assert node_mounts[f"{root}/{name}"] == own


def test_each_node_sets_up_its_own_shard_and_then_serves(services: dict[str, Any]) -> None:
    shards = set()
    for name, service in nodes(services).items():
        argv = command(service)
        assert argv[:2] == ["sh", "-c"]
        setup, _, start = argv[2].partition(" && ")
        setup_args = shlex.split(setup)
        assert setup_args[:2] == ["broker-net-demo", "setup-node"]
        assert int(setup_args[setup_args.index("--shards") + 1]) == len(nodes(services))
        shards.add(int(setup_args[setup_args.index("--shard") + 1]))
        # exec: the agent replaces the shell and receives SIGTERM from `docker compose stop`.
        assert start == "exec node-agent start", name
        assert environment(service)[f"{NODE_PREFIX}NODE_ID"] == name
    assert shards == set(range(len(nodes(services))))


def test_every_variable_names_a_real_setting(services: dict[str, Any]) -> None:
    fields = {
        NODE_PREFIX: set(NodeSettings.model_fields),
        RESEARCHER_PREFIX: set(ResearcherSettings.model_fields),
    }
    namespaces = set()
    for name, service in services.items():
        for key, value in environment(service).items():
            for prefix, known in fields.items():
                if key.startswith(prefix):
                    assert key.removeprefix(prefix).lower() in known, f"{name}: {key}"
            if key.endswith("_NAMESPACE"):
                namespaces.add(value)
    assert len(namespaces) == 1


def test_the_users_match_the_definitions_and_the_env_file(services: dict[str, Any]) -> None:
    definitions = json.loads(DEFINITIONS_FILE.read_text())
    users = [arg.split(":")[0] for arg in command(services["provision"])[2:]]
    assert sorted(p["user"] for p in definitions["permissions"]) == sorted(users)
    assert set(nodes(services)) < set(users)
    example = read_env_file(ENV_EXAMPLE)
    for user in users:
        assert password_variable(user) in example, user
    for name, service in nodes(services).items():
        url = environment(service)[f"{NODE_PREFIX}AMQP_URL"]
        assert url.startswith(f"amqp://{name}:"), name
    url = environment(services["researcher"])[f"{RESEARCHER_PREFIX}AMQP_URL"]
    assert url.startswith("amqp://researcher:")


def test_secrets_come_from_the_env_file_only() -> None:
    raw = load_compose()
    for name, service in raw["services"].items():
        for key, value in environment(service).items():
            if SECRET_KEY.search(key):
                assert ONE_REFERENCE.match(value), f"{name}: {key} holds a literal secret"
            for password in re.findall(r"://[^:/@\s]+:([^@\s]*)@", value):
                assert ONE_REFERENCE.match(password), f"{name}: {key} holds a literal password"
    example = read_env_file(ENV_EXAMPLE)
    assert [k for k, v in example.items() if SECRET_KEY.search(k) and v] == []
    needed = {
        variable
        for variable, default in references(COMPOSE_FILE.read_text()).items()
        if default is None
    }
    assert needed <= set(example), "set these in .env.example"


def test_only_the_provisioning_reads_the_whole_env_file(services: dict[str, Any]) -> None:
    # env_file hands every variable to the container: each node would see all passwords.
    readers = {name: env_files(s) for name, s in services.items() if env_files(s)}
    assert readers == {"provision": [".env"]}
    for ignore_file in (".gitignore", ".dockerignore"):
        lines = (ROOT / ignore_file).read_text().splitlines()
        assert ".env" in lines, ignore_file


def test_the_image_runs_as_a_user_and_starts_a_node_agent() -> None:
    instructions = [
        line.split(maxsplit=1)
        for line in (ROOT / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    keywords = [keyword for keyword, _ in instructions]
    arguments = dict(reversed(instructions))  # the first of each keyword
    # The base image is a build argument whose default is the official slim Python image.
    assert keywords[:2] == ["ARG", "FROM"]
    assert arguments["ARG"] == "BASE_IMAGE=python:3.11-slim"
    assert arguments["FROM"] == "${BASE_IMAGE}"
    last = {keyword: rest for keyword, rest in instructions}
    assert last["USER"] not in ("root", "0")
    assert keywords.index("USER") < keywords.index("CMD")
    assert json.loads(last["CMD"]) == ["node-agent", "start"]
    assert "pyproject.toml" in arguments["COPY"]
    for keyword, rest in instructions:
        if keyword in ("ENV", "ARG"):
            assert not SECRET_KEY.search(rest), rest
