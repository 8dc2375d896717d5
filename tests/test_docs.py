"""The documented examples run as written, against real node agents."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from broker_net.crypto.introductions import introduce
from node_agent.plans import PlanRegistry
from simulation.demo_plan import BreastCancerPlan
from simulation.demo_setup import register_demo_shard
from training_plans.plan import plan_source

ROOT = Path(__file__).resolve().parents[1]
NODES = ["site-1", "site-2"]


@pytest.mark.rabbitmq
def test_the_federated_run_example(amqp_url: str, namespace: str, tmp_path: Path) -> None:
    researcher_dir = tmp_path / "alice"
    introduce("alice", researcher_dir, {node: tmp_path / node for node in NODES})
    for index, node in enumerate(NODES):
        register_demo_shard(tmp_path / node, index, len(NODES))
        with PlanRegistry(tmp_path / node) as plans:  # the operators reviewed the plan
            plans.approve(plans.register(plan_source(BreastCancerPlan)).plan_id)
    agents = []
    try:
        for node in NODES:
            env = {
                **os.environ, "BROKER_NET_NODE_NODE_ID": node,
                "BROKER_NET_NODE_DATA_DIR": str(tmp_path / node),
                "BROKER_NET_NODE_AMQP_URL": amqp_url, "BROKER_NET_NODE_NAMESPACE": namespace,
                "BROKER_NET_NODE_HEARTBEAT_INTERVAL": "0.5",
            }  # fmt: skip
            agents.append(
                subprocess.Popen([sys.executable, "-m", "node_agent", "start"], env=env, cwd=ROOT)
            )
        env = {
            **os.environ, "BROKER_NET_RESEARCHER_RESEARCHER_ID": "alice",
            "BROKER_NET_RESEARCHER_AMQP_URL": amqp_url,
            "BROKER_NET_RESEARCHER_NAMESPACE": namespace,
            "BROKER_NET_RESEARCHER_DATA_DIR": str(researcher_dir),
        }  # fmt: skip
        example = subprocess.run(
            [sys.executable, "docs/examples/federated_run.py", *NODES],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        for agent in agents:
            agent.terminate()
        for agent in agents:
            agent.wait(timeout=30)
    assert example.returncode == 0, example.stderr
    assert "site-1 SUCCESS" in example.stdout and "site-2 SUCCESS" in example.stdout
    assert "pooled statistics" in example.stdout
    assert "last round" in example.stdout
