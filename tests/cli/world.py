"""What the command-line tests run against: a namespace with node agents, the console scripts
of this environment, and a runner that starts a command the way a user would.

Each command runs as a subprocess of the real console script, with its own researcher id and
data folders, so commands can run side by side. For "the broker dies mid-command", the command
reaches the broker through a :class:`~tests.cli.proxy.Proxy`, killed once the command is
connected.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from broker_net.crypto.introductions import introduce
from tests.cli.proxy import Proxy
from tests.conftest import ADMIN, AMQP_HOST, AMQP_PORT, MANAGEMENT_URL
from tests.support.processes import AgentProcesses

BIN = Path(sys.executable).parent
"""Where this environment's console scripts are: node-agent, researcher, broker-net-demo."""

AGENTS = {
    "n-ok": ("--security",),
    "n-fail": ("--security", "--fail"),
    "n-slow": ("--security", "--delay", "30"),
}
"""The node agents every command may reach: one answers, one answers with an error, one is
slow to answer."""


def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class World:
    """The namespace, its agents and the places each command works in."""

    root: Path
    vhost: str
    amqp_url: str
    namespace: str
    researchers: list[str]
    agents: AgentProcesses | None = None
    closed: int = field(default_factory=closed_port)

    def researcher_dir(self, researcher_id: str) -> Path:
        return self.root / "researchers" / researcher_id

    def start(self) -> None:
        """Make every researcher and agent trust each other, then start the agents."""
        node_dirs = {node: self.root / "nodes" / node for node in AGENTS}
        for researcher in self.researchers:
            introduce(researcher, self.researcher_dir(researcher), node_dirs)
        self.agents = AgentProcesses(self.amqp_url, self.namespace, self.root / "nodes")
        for node, options in AGENTS.items():
            self.agents.start(node, *options)

    def stop(self) -> None:
        if self.agents is not None:
            self.agents.stop_all()

    def context(self, folder: Path, amqp_url: str) -> dict[str, str]:
        """The placeholders a row's arguments and settings may use."""
        host = f"{AMQP_HOST}:{AMQP_PORT}"
        return {
            "amqp": amqp_url,
            "closed_amqp": self.amqp_url.replace(host, f"127.0.0.1:{self.closed}"),
            "badpw_amqp": self.amqp_url.replace("guest:guest@", "guest:wrong@"),
            "closed_mgmt": f"http://127.0.0.1:{self.closed}",
            "dir": str(folder),
            "root": str(self.root),
            "vhost": self.vhost,
        }  # fmt: skip

    def environment(self, researcher: str, folder: Path, amqp_url: str) -> dict[str, str]:
        """A command's environment: every setting valid, short patience, 80 columns."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_NET")}
        env.update(
            COLUMNS="80",
            BROKER_NET_RESEARCHER_AMQP_URL=amqp_url,
            BROKER_NET_RESEARCHER_NAMESPACE=self.namespace,
            BROKER_NET_RESEARCHER_RESEARCHER_ID=researcher,
            BROKER_NET_RESEARCHER_DATA_DIR=str(self.researcher_dir(researcher)),
            BROKER_NET_RESEARCHER_MANAGEMENT_URL=MANAGEMENT_URL,
            BROKER_NET_RESEARCHER_MANAGEMENT_USER=ADMIN[0],
            BROKER_NET_RESEARCHER_MANAGEMENT_PASSWORD=ADMIN[1],
            BROKER_NET_RESEARCHER_BROKER_PATIENCE="1",
            BROKER_NET_NODE_AMQP_URL=amqp_url,
            BROKER_NET_NODE_NAMESPACE=self.namespace,
            BROKER_NET_NODE_NODE_ID="n-cli",
            BROKER_NET_NODE_DATA_DIR=str(folder / "node"),
        )
        return env


Prepare = Callable[[World, Path], Mapping[str, str] | None]


@dataclass(frozen=True)
class Row:
    """One command in one situation, and what it must answer."""

    command: str
    case: str
    args: tuple[str, ...]
    code: int
    phrase: str
    env: Mapping[str, str | None] = field(default_factory=dict)
    """Settings to change (``None`` removes one); values may hold placeholders."""
    prepare: Prepare | None = None
    kill_after: float | None = None
    """Kill the broker (the proxy) this many seconds after the command connected."""
    as_json: bool = False

    @property
    def id(self) -> str:
        return f"{self.command} | {self.case}".replace(" ", "-").replace("|", "")

    @property
    def researcher(self) -> str:
        """The row's own researcher id (no two commands share a reply queue)."""
        name = "".join(c if c.isalnum() else "-" for c in f"r-{self.command}-{self.case}")
        return "-".join(part for part in name.split("-") if part)[:100]


@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: str
    stderr: str
    seconds: float


def run_row(world: World, row: Row, timeout: float = 40.0) -> Outcome:
    """Run ``row``'s command as a user would, in a folder of its own."""
    folder = world.root / "rows" / row.researcher
    folder.mkdir(parents=True, exist_ok=True)
    proxy = Proxy((AMQP_HOST, AMQP_PORT)) if row.kill_after is not None else None
    amqp_url = world.amqp_url
    if proxy is not None:
        amqp_url = amqp_url.replace(f"{AMQP_HOST}:{AMQP_PORT}", f"127.0.0.1:{proxy.port}")
    context = world.context(folder, amqp_url)
    if row.prepare is not None:
        context.update(row.prepare(world, folder) or {})
    env = world.environment(row.researcher, folder, amqp_url)
    for key, value in row.env.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value.format(**context)
    program, *words = row.command.split()
    argv = [str(BIN / program), *words, *(arg.format(**context) for arg in row.args)]
    started = time.monotonic()
    process = subprocess.Popen(
        argv, env=env, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        if proxy is not None and row.kill_after is not None:
            if proxy.connected.wait(timeout):
                time.sleep(row.kill_after)
            proxy.kill()
        stdout, stderr = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        if proxy is not None:
            proxy.kill()
    return Outcome(process.returncode, stdout, stderr, time.monotonic() - started)


def write(path: Path, text: str, mode: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if mode is not None:
        path.chmod(mode)
    return path
