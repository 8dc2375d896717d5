"""The README's "Your first federation", run as a person would: its five shell blocks, in
order, in a fresh folder, with the console scripts of this installation.

Only the broker's location comes from outside the README (the test's own vhost and namespace,
in ``BROKER_NET_*_AMQP_URL`` and ``BROKER_NET_*_NAMESPACE``), so that runs never meet. Where the
README says ``<plan id>``, the test reads the id from ``node-agent plans list`` as the operator
would, and the other operators repeat node-0's block with their own node.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
NODES = ["node-0", "node-1", "node-2"]

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]


def _section(title: str) -> str:
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def _blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def test_the_readme_shows_the_example_as_it_is() -> None:
    shown = _blocks(_section("Writing researcher code"), "python")[0]
    assert shown == (ROOT / "docs" / "examples" / "federated_run.py").read_text()


@pytest.fixture
def shell_env(amqp_url: str, namespace: str, tmp_path: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("BROKER_NET_")}
    bin_dir = str(Path(sys.executable).parent)  # this installation's console scripts
    return env | {
        "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        "BROKER_NET_NODE_AMQP_URL": amqp_url,
        "BROKER_NET_NODE_NAMESPACE": namespace,
        "BROKER_NET_RESEARCHER_AMQP_URL": amqp_url,
        "BROKER_NET_RESEARCHER_NAMESPACE": namespace,
        "PYTHONPATH": str(ROOT),  # the example is run from the test's folder
    }


def _run(script: str, env: dict[str, str], cwd: Path, timeout: float = 120) -> str:
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], env=env, cwd=cwd, capture_output=True,
        text=True, timeout=timeout,
    )  # fmt: skip
    assert done.returncode == 0, f"{script}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    assert "Traceback" not in done.stdout + done.stderr
    return done.stdout


def test_your_first_federation(shell_env: dict[str, str], tmp_path: Path) -> None:
    blocks = _blocks(_section("Your first federation"), "bash")
    assert len(blocks) == 5, "the README's first federation is five shell blocks"
    data, identities, start, example, approve = blocks
    work = tmp_path / "work"
    work.mkdir()
    (work / "docs").symlink_to(ROOT / "docs")  # the example's path, from the repository root
    researcher = "export BROKER_NET_RESEARCHER_RESEARCHER_ID=alice " + (
        "BROKER_NET_RESEARCHER_DATA_DIR=federation/alice\n"
    )
    assert data.startswith(researcher), "block 1 sets the researcher's settings for the rest"
    _run(data, shell_env, work)
    _run(researcher + identities, shell_env, work)

    agents_log = (tmp_path / "agents.log").open("w")
    agents = subprocess.Popen(
        ["bash", "-c", start + "wait"], env=shell_env, cwd=work, start_new_session=True,
        stdout=agents_log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    runner = None
    try:
        runner = subprocess.Popen(
            ["bash", "-c", researcher + example], env=shell_env, cwd=work,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        for node in NODES:
            operator = approve.replace("node-0", node)
            listed = _wait_for_plan(operator, shell_env, work)
            plan_id = re.search(r"\b([0-9a-f]{16,64})\b", listed)
            assert plan_id is not None, listed
            shown = _run(operator.replace("<plan id>", plan_id.group(1)), shell_env, work)
            assert "approved" in shown.lower()
        out, err = runner.communicate(timeout=240)
    finally:
        if runner is not None and runner.poll() is None:
            runner.kill()
        os.killpg(agents.pid, signal.SIGTERM)
        agents.wait(timeout=60)
        agents_log.close()
    assert "Traceback" not in (tmp_path / "agents.log").read_text()
    assert runner.returncode == 0, f"--- stdout\n{out}\n--- stderr\n{err}"
    assert "Traceback" not in out + err
    for node in NODES:
        assert f"{node}: plan approved" in out
        assert out.count(f"{node}: plan approved") == 1  # one progress line per node
    assert "round 10: validation accuracy" in out
    accuracy = float(re.search(r"test accuracy of the federated model: ([0-9.]+)", out)[1])
    assert accuracy >= 0.93, out


def _wait_for_plan(operator: str, env: dict[str, str], cwd: Path) -> str:
    """What ``node-agent plans list`` shows once the example has submitted its plan."""
    listing = "\n".join(line for line in operator.splitlines() if "<plan id>" not in line)
    deadline = time.monotonic() + 90
    while True:
        listed = _run(listing, env, cwd)
        if "No training plans" not in listed or time.monotonic() > deadline:
            return listed
        time.sleep(0.5)
