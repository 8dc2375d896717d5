"""The files of ``make compose-proof``, checked without a container engine.

deploy/compose-proof.yml may change only the images, the build and the demo's rounds of
docker-compose.yml; scripts/compose-proof.sh sets every variable it needs, keeps off this
machine's RabbitMQ ports, waits with deadlines and cleans up; the Dockerfile's offline build
reads the wheelhouse the script fills. The proof itself (containers) runs only by
``make compose-proof``.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.deploy.compose import COMPOSE_FILE, ROOT, command, load_compose, references

OVERRIDE = ROOT / "deploy" / "compose-proof.yml"
SCRIPT = ROOT / "scripts" / "compose-proof.sh"
BASE_IMAGES_SCRIPT = ROOT / "scripts" / "build-base-images.sh"
CHECKER = ROOT / "scripts" / "compose_proof.py"
PROOF_IMAGE = "broker-net:compose-proof"


@pytest.fixture(scope="module")
def override() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(OVERRIDE.read_text())
    return document


def _checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("compose_proof", CHECKER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_override_changes_only_images_builds_and_the_demo_rounds(
    override: dict[str, Any],
) -> None:
    base = load_compose()["services"]
    for name, service in override["services"].items():
        assert name in base and not base[name].get("profiles"), name
        assert set(service) <= {"image", "build", "command"}, name
        if "command" in service:
            argv = command(service)
            assert argv[:-2] == command(base[name]), "the demo as compose runs it, more rounds"
            assert argv[-2] == "--rounds"


def test_every_service_compose_builds_is_built_on_the_chosen_base_offline(
    override: dict[str, Any],
) -> None:
    base = load_compose()["services"]
    built = {name for name, service in base.items() if "build" in service}
    assert built == {"hospital-a", "hospital-b", "hospital-c", "researcher"}
    for name in built:
        service = override["services"][name]
        assert service["image"] == PROOF_IMAGE, "a tag of its own: broker-net:latest stays"
        assert service["build"]["context"] == "."
        assert set(service["build"]["args"]) == {"BASE_IMAGE", "WHEELHOUSE"}
    assert {"rabbitmq", "provision"} <= set(override["services"])


def test_the_script_sets_every_variable_the_override_needs() -> None:
    script = SCRIPT.read_text()
    for variable, default in references(OVERRIDE.read_text()).items():
        assert re.search(rf"export {variable}\b|export [A-Z_ ]*\b{variable}\b", script), variable
        if default is None:
            assert variable.startswith("COMPOSE_PROOF_"), variable


def test_the_broker_ports_move_and_the_proof_keeps_off_5672_and_15672() -> None:
    ports = load_compose()["services"]["rabbitmq"]["ports"]
    assert ports == [
        "127.0.0.1:${RABBITMQ_AMQP_PORT:-5672}:5672",
        "127.0.0.1:${RABBITMQ_MANAGEMENT_PORT:-15672}:15672",
    ]
    assert references(COMPOSE_FILE.read_text())["RABBITMQ_MANAGEMENT_PORT"] == "15672"
    script = SCRIPT.read_text()
    assert "export RABBITMQ_AMQP_PORT RABBITMQ_MANAGEMENT_PORT" in script
    assert re.search(r"5672 \| 15672\) fail", script)


def test_the_script_waits_with_deadlines_and_always_cleans_up() -> None:
    script = SCRIPT.read_text()
    assert "trap cleanup EXIT" in script
    assert re.search(r'"\$\{compose_argv\[@\]\}" down --volumes --remove-orphans', script)
    compose_calls = [line for line in script.splitlines() if '"${compose_argv[@]}"' in line]
    assert compose_calls and all(line.strip().startswith("timeout ") for line in compose_calls)
    assert 'timeout 1200 "$PYTHON" scripts/compose_proof.py' in script
    for path in (SCRIPT, BASE_IMAGES_SCRIPT):
        subprocess.run(["bash", "-n", str(path)], check=True, timeout=30)


def test_the_offline_build_reads_the_wheelhouse_the_script_fills() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "ARG WHEELHOUSE=" in dockerfile and "PIP_NO_INDEX=1" in dockerfile
    assert "WHEELHOUSE=deploy/wheelhouse" in SCRIPT.read_text()
    dockerignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert dockerignore.index("!deploy/wheelhouse") > dockerignore.index("deploy")
    assert "deploy/wheelhouse/" in (ROOT / ".gitignore").read_text().splitlines()


def test_the_proof_is_a_make_target_outside_make_test() -> None:
    makefile = (ROOT / "Makefile").read_text()
    target = re.search(r"^compose-proof:.*\n\t(.*)$", makefile, re.MULTILINE)
    assert target is not None and "scripts/compose-proof.sh" in target[1]
    test_target = re.search(r"^test:(.*)$", makefile, re.MULTILINE)
    assert test_target is not None and "compose-proof" not in test_target[1]


def test_the_accuracy_line_is_read_whole_from_the_wrapped_demo_output() -> None:
    output = (
        "5. FedAvg: 20 rounds over 3 nodes\n"
        "6. Test accuracy on 114 held-out rows: federated model 0.965, model trained \n"
        "centrally on the pooled data 0.974 (difference -0.9 points)\n"
        "demo finished in 74.4 s\n"
    )
    assert _checker()._accuracy(output) == (
        "6. Test accuracy on 114 held-out rows: federated model 0.965, model trained "
        "centrally on the pooled data 0.974 (difference -0.9 points)"
    )
    assert _checker()._accuracy("5. FedAvg: 20 rounds over 3 nodes\n") == ""
