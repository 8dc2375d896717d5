"""The checks of ``make compose-proof``, run by scripts/compose-proof.sh once the images exist.

Brings docker-compose.yml (with deploy/compose-proof.yml) up in containers and checks, each
step with a deadline: the broker is healthy; provisioning exited 0 and created the users; each
node agent consumes its own queue as its own user; the researcher's demo reaches its FedAvg
rounds; a node container is killed and restarted while they run; the demo still finishes with
its accuracy line; every node queue has one consumer again and every node acknowledged requests.

Reads COMPOSE (the compose command), RABBITMQ_MANAGEMENT_PORT and the administrator from the
environment or .env, as compose does. Prints one line per step and the demo's output; on a
failure, one line saying what failed, then the end of every service's log.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

ROOT = Path(__file__).resolve().parents[1]
VHOST = "broker-net"
NAMESPACE = "broker_net"
NODES = ("hospital-a", "hospital-b", "hospital-c")
USERS = ("researcher", *NODES)
FEDAVG_STARTED = "5. FedAvg"
ACCURACY = "6. Test accuracy"


class ProofError(Exception):
    """A check that failed: its message is the one line the proof ends with."""


class Proof:
    """The compose project under test, its containers and its broker's management API."""

    def __init__(self, compose: list[str], management_url: str, admin: tuple[str, str]) -> None:
        self.compose_argv = compose
        self.api = httpx.Client(base_url=management_url + "/api", auth=admin, timeout=10)
        self.started = time.monotonic()

    def step(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:5.0f} s] {text}", flush=True)

    def compose(self, *args: str, timeout: float) -> str:
        return _run([*self.compose_argv, *args], timeout=timeout)

    def container(self, service: str) -> str:
        ids = self.compose("ps", "-a", "-q", service, timeout=60).split()
        if len(ids) != 1:
            raise ProofError(f"expected one container of {service}, found {len(ids)}")
        return ids[0]

    def state(self, service: str) -> dict[str, Any]:
        inspected = json.loads(_run(["docker", "inspect", self.container(service)], timeout=60))
        state: dict[str, Any] = inspected[0]["State"]
        state["RestartCount"] = inspected[0].get("RestartCount", 0)
        return state

    def logs(self, service: str) -> str:
        return _run(["docker", "logs", self.container(service)], timeout=60, stderr=True)

    def get(self, path: str) -> Any:
        answer = self.api.get(path)
        if answer.status_code != 200:
            raise ProofError(f"management API GET {path}: HTTP {answer.status_code}")
        return answer.json()

    def queue(self, node: str) -> dict[str, Any]:
        queue: dict[str, Any] = self.get(
            f"/queues/{quote(VHOST, safe='')}/{NAMESPACE}.node.{node}.requests"
        )
        return queue

    def wait(self, what: str, timeout: float, check: Any) -> Any:
        """Call ``check()`` every second until it returns something true; fail after timeout."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                found = check()
            except (httpx.HTTPError, ProofError):
                found = None
            if found:
                return found
            if time.monotonic() > deadline:
                raise ProofError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(1)


def _run(argv: list[str], *, timeout: float, stderr: bool = False) -> str:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, check=False, cwd=ROOT
        )
    except subprocess.TimeoutExpired:
        raise ProofError(f"`{shlex.join(argv)}` took more than {timeout:.0f} s") from None
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or [""]
        raise ProofError(f"`{shlex.join(argv)}` exited {done.returncode}: {last[0]}")
    return done.stdout + (done.stderr if stderr else "")


def _consumers(proof: Proof, node: str) -> list[str]:
    """The users of the consumers on a node's queue."""
    details = proof.queue(node).get("consumer_details") or []
    return [str(c.get("channel_details", {}).get("user", "?")) for c in details]


def bring_up(proof: Proof) -> None:
    proof.step("compose up -d rabbitmq provision hospital-a hospital-b hospital-c")
    proof.compose("up", "-d", "rabbitmq", "provision", *NODES, timeout=600)
    health = proof.state("rabbitmq").get("Health", {}).get("Status")
    if health != "healthy":
        raise ProofError(f"the broker is {health}, not healthy")
    proof.step("broker healthy (rabbitmq-diagnostics check_port_connectivity)")

    state = proof.state("provision")
    if state["Status"] != "exited" or state["ExitCode"] != 0:
        raise ProofError(f"provision is {state['Status']} (exit code {state['ExitCode']})")
    users = {user["name"]: user["tags"] for user in proof.get("/users")}
    missing = [user for user in USERS if user not in users]
    if missing:
        raise ProofError(f"provisioning left out users {missing}")
    said = [line for line in proof.logs("provision").splitlines() if line.startswith("provision:")]
    proof.step(f"provisioning exited 0: {'; '.join(line[11:] for line in said)}")

    for node in NODES:
        consumers = proof.wait(
            f"one consumer on {node}'s queue", 180, lambda n=node: _consumers(proof, n) or None
        )
        if consumers != [node]:
            raise ProofError(f"{node}'s queue is consumed by {consumers}, not by {node} alone")
    proof.step("each node queue has one consumer, logged in as its own user: " + ", ".join(
        f"{NAMESPACE}.node.{node}.requests <- {node}" for node in NODES
    ))  # fmt: skip


def run_demo_with_a_node_restart(proof: Proof, victim: str, demo_timeout: float) -> str:
    proof.step("compose up -d --no-deps researcher (the demo)")
    proof.compose("up", "-d", "--no-deps", "researcher", timeout=120)

    def training() -> bool:
        if FEDAVG_STARTED in proof.logs("researcher"):
            return True
        if proof.state("researcher")["Status"] != "running":
            raise ProofError("the demo stopped before its FedAvg rounds")
        return False

    proof.wait("the demo's FedAvg rounds to start", 300, training)
    before = proof.state(victim)
    proof.step(f"FedAvg rounds running: compose kill {victim} (SIGKILL)")
    proof.compose("kill", victim, timeout=60)
    killed_at = time.monotonic()
    if proof.state("researcher")["Status"] != "running" or ACCURACY in proof.logs("researcher"):
        raise ProofError("the demo ended before the node was killed: raise COMPOSE_PROOF_ROUNDS")
    after_kill = proof.state(victim)
    if after_kill["Running"] and after_kill["StartedAt"] == before["StartedAt"]:
        raise ProofError(f"{victim} still runs after compose kill")
    if after_kill["Running"]:
        how = "docker's restart policy restarted it"
    else:
        proof.step(f"{victim} exited {after_kill['ExitCode']}; compose start {victim}")
        proof.compose("start", victim, timeout=120)
        how = "compose start restarted it"
    proof.wait(
        f"{victim} to consume its queue again",
        180,
        lambda: proof.state(victim)["Running"] and _consumers(proof, victim) == [victim],
    )
    proof.step(
        f"{victim}: {how}; it consumes its queue again "
        f"{time.monotonic() - killed_at:.0f} s after the kill, the demo still running"
    )

    def finished() -> dict[str, Any] | None:
        state = proof.state("researcher")
        return state if state["Status"] == "exited" else None

    state = proof.wait("the demo to finish", demo_timeout, finished)
    output = proof.logs("researcher")
    if state["ExitCode"] != 0:
        raise ProofError(f"the demo exited {state['ExitCode']}: {output.strip().splitlines()[-1:]}")
    if not _accuracy(output):
        raise ProofError("the demo exited 0 without its accuracy line")
    return output


def _accuracy(output: str) -> str:
    """The demo's accuracy sentence, rejoined where the terminal width wrapped it."""
    lines = output.splitlines()
    starts = [i for i, line in enumerate(lines) if ACCURACY in line]
    if not starts:
        return ""
    sentence: list[str] = []
    for line in lines[starts[0] :]:
        if line.startswith("demo finished") or (sentence and not line.strip()):
            break
        sentence.append(line.strip())
    return " ".join(sentence)


def check_after(proof: Proof, victim: str) -> None:
    def settled() -> dict[str, dict[str, Any]] | None:
        queues = {node: proof.queue(node) for node in NODES}
        ok = all(
            q.get("consumers") == 1 and q.get("message_stats", {}).get("ack", 0) > 0
            for q in queues.values()
        )
        return queues if ok else None

    queues = proof.wait("one consumer and acknowledged requests on every node queue", 60, settled)
    for node in NODES:
        if not proof.state(node)["Running"]:
            raise ProofError(f"{node} is not running after the demo")
    figures = ", ".join(
        f"{node} {q['message_stats'].get('ack', 0)} acked"
        f" ({q['message_stats'].get('redeliver', 0)} redelivered)"
        for node, q in queues.items()
    )
    proof.step(f"after the demo every node queue has 1 consumer; {figures}")


def _admin() -> tuple[str, str]:
    env: dict[str, str] = {}
    dotenv = ROOT / ".env"
    if dotenv.exists():
        for line in dotenv.read_text().splitlines():
            key, sep, value = line.strip().partition("=")
            if sep and not key.startswith("#"):
                env[key.strip()] = value.strip().strip("'\"")
    env.update(os.environ)
    return env.get("RABBITMQ_ADMIN_USER") or "admin", env.get("RABBITMQ_ADMIN_PASSWORD", "")


def _tail_logs(proof: Proof) -> None:
    for service in ("rabbitmq", "provision", *NODES, "researcher"):
        try:
            lines = proof.logs(service).rstrip().splitlines()[-25:]
        except ProofError:
            continue
        print(f"--- last lines of {service}", file=sys.stderr)
        print("\n".join(lines), file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", default="broker-net-proof")
    parser.add_argument("--override", default="deploy/compose-proof.yml")
    parser.add_argument("--victim", default="hospital-b", choices=NODES)
    parser.add_argument("--demo-timeout", type=float, default=600)
    options = parser.parse_args()
    compose = [
        *shlex.split(os.environ.get("COMPOSE", "docker-compose")),
        *("-p", options.project, "-f", "docker-compose.yml", "-f", options.override),
    ]
    port = os.environ.get("RABBITMQ_MANAGEMENT_PORT", "")
    if not port or port == "15672":
        print("compose-proof: error: RABBITMQ_MANAGEMENT_PORT must be set, and not to 15672")
        return 2
    proof = Proof(compose, f"http://127.0.0.1:{port}", _admin())
    try:
        bring_up(proof)
        output = run_demo_with_a_node_restart(proof, options.victim, options.demo_timeout)
        proof.step("the demo exited 0; its output:")
        print("\n".join("    " + line for line in output.rstrip().splitlines()), flush=True)
        check_after(proof, options.victim)
    except ProofError as error:
        _tail_logs(proof)
        print(f"compose-proof: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("compose-proof: interrupted", file=sys.stderr)
        return 130
    proof.step(f"passed: {_accuracy(output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
