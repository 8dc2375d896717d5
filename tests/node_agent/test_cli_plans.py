"""``node-agent plans list|show|approve|reject``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from broker_net.codes import TrainingPlanStatus
from node_agent.cli_plans import plans_app
from node_agent.plans import PlanRegistry

SOURCE = "import numpy as np\n\nclass Plan:\n    pass\n"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    with PlanRegistry(tmp_path) as plans:
        plans.register(SOURCE, description="a plan", researcher_id="alice")
    return tmp_path


def invoke(*args: str):
    return CliRunner().invoke(plans_app, list(args))


def plan_id(data_dir: Path) -> str:
    with PlanRegistry(data_dir) as plans:
        return plans.list()[0].plan_id


def test_list_and_show(data_dir):
    listed = invoke("list", "--json", "--data-dir", str(data_dir))
    assert listed.exit_code == 0, listed.output
    (row,) = json.loads(listed.output)
    assert row["status"] == "Pending" and row["researcher_id"] == "alice"
    assert "source" not in row

    assert plan_id(data_dir)[:16] in invoke("list", "--data-dir", str(data_dir)).output
    assert (
        json.loads(
            invoke("list", "--json", "--status", "approved", "--data-dir", str(data_dir)).output
        )
        == []
    )

    shown = invoke("show", plan_id(data_dir)[:8], "--data-dir", str(data_dir))
    assert shown.exit_code == 0, shown.output
    assert "class Plan" in shown.output and "a plan" in shown.output


def test_approve_then_reject(data_dir):
    full_id = plan_id(data_dir)
    approved = invoke("approve", full_id[:12], "--note", "read it", "--data-dir", str(data_dir))
    assert approved.exit_code == 0, approved.output
    with PlanRegistry(data_dir) as plans:
        assert plans.status(SOURCE) is TrainingPlanStatus.APPROVED
        assert plans.show(full_id).note == "read it"

    assert invoke("reject", full_id, "--data-dir", str(data_dir)).exit_code == 0
    with PlanRegistry(data_dir) as plans:
        assert plans.status(SOURCE) is TrainingPlanStatus.REJECTED


def test_errors_exit_2_with_one_line(data_dir):
    unknown = invoke("approve", "0" * 64, "--data-dir", str(data_dir))
    assert unknown.exit_code == 2 and unknown.stderr.startswith("error: no training plan")
    short = invoke("show", "ab", "--data-dir", str(data_dir))
    assert short.exit_code == 2 and "at least 6" in short.stderr
    bad_status = invoke("list", "--status", "maybe", "--data-dir", str(data_dir))
    assert bad_status.exit_code == 2 and "unknown status" in bad_status.stderr
    assert all(len(r.stderr.splitlines()) == 1 for r in (unknown, short, bad_status))


def test_every_command_has_help():
    for command in ("list", "show", "approve", "reject"):
        result = invoke(command, "--help")
        assert result.exit_code == 0
        assert "--data-dir" in result.output
