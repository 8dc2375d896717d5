"""A three-node RabbitMQ cluster on this machine, beside the shared broker, for fault tests.

Every node runs from one temporary folder with its own node name, AMQP and distribution ports,
Erlang cookie, configuration, plugins file, data and logs, all set through environment
variables (see ``/work/shared/reference/local-cluster.md``): nothing is read from
``/etc/rabbitmq``, and with a cookie of its own the cluster cannot reach the shared
``rabbit@localhost``. Nodes are started with ``/usr/lib/rabbitmq/bin/rabbitmq-server -detached``
and driven with ``/usr/lib/rabbitmq/bin/rabbitmqctl``, never the ``/usr/sbin`` wrappers (which
switch to the rabbitmq user and its cookie)::

    cluster = LocalCluster(tmp_dir)
    cluster.start()                       # boots three nodes at once, then joins them
    url = cluster.urls(vhost, first=1)    # "amqp://...:<port of node 1>/vhost,amqp://..."
    cluster.kill(1)                       # kill -9, as a crash would
    cluster.start_node(1)                 # boots it again; it rejoins the cluster by itself
    cluster.destroy()                     # kill -9 every node, delete the folder

Node numbers run from 1 to ``size``. Only processes started here are ever signalled: each
carries its cluster's folder in its environment, which is checked before every kill.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
_LOOPBACK_ONLY = "-kernel inet_dist_use_interface {127,0,0,1}"
_MARKER = "BROKER_NET_TEST_CLUSTER"


class ClusterError(RuntimeError):
    """Raised when a cluster node cannot be started, joined, queried or stopped."""


@dataclass(frozen=True)
class ClusterNode:
    """One node of the cluster: its Erlang name, ports and folder."""

    number: int
    name: str
    amqp_port: int
    dist_port: int
    folder: Path

    @property
    def pid_file(self) -> Path:
        """Where the node writes the pid of its Erlang VM."""
        return self.folder / f"{self.name.split('@')[0]}.pid"


class LocalCluster:
    """Three (or ``size``) RabbitMQ nodes clustered on 127.0.0.1, under ``base``.

    Args:
        base: an empty folder for the cookie, configuration, data and logs; deleted by
            :meth:`destroy`.
        size: number of nodes.
        boot_timeout: seconds a node may take to boot (boots stretch 3x on a loaded machine).
    """

    def __init__(self, base: Path, *, size: int = 3, boot_timeout: float = 180.0) -> None:
        self.base = base
        self.size = size
        self.boot_timeout = boot_timeout
        token = secrets.token_hex(3)
        amqp_ports = _free_ports(size)
        dist_ports = _free_ports(size, avoid=set(amqp_ports))
        self.nodes = {
            number: ClusterNode(
                number=number,
                name=f"bn{number}-{token}@localhost",
                amqp_port=amqp_ports[number - 1],
                dist_port=dist_ports[number - 1],
                folder=base / f"bn{number}",
            )
            for number in range(1, size + 1)
        }
        self.home = base / "home"

    # --- addresses -----------------------------------------------------------------------------

    def url(
        self, number: int, vhost: str = "/", *, user: str = "guest", password: str = "guest"
    ) -> str:
        """The AMQP URL of node ``number`` for ``vhost`` (guest may log in on loopback only)."""
        port = self.nodes[number].amqp_port
        return f"amqp://{user}:{password}@127.0.0.1:{port}/{quote(vhost, safe='')}"

    def urls(
        self, vhost: str = "/", *, first: int = 1, user: str = "guest", password: str = "guest"
    ) -> str:
        """Every node's URL, comma-separated, starting with node ``first`` and going round."""
        order = [(first - 1 + shift) % self.size + 1 for shift in range(self.size)]
        return ",".join(self.url(n, vhost, user=user, password=password) for n in order)

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Boot every node at once, cluster them with node 1, and wait until all are online.

        Raises:
            ClusterError: a node did not boot or join in time; the nodes started so far are
                left running for :meth:`destroy` to remove.
        """
        self.home.mkdir(parents=True)
        cookie = self.home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(20).upper())
        cookie.chmod(0o400)
        (self.base / "rabbitmq-env.conf").write_text("# this cluster is set up by environment\n")
        for node in self.nodes.values():
            for folder in ("mnesia", "log"):
                (node.folder / folder).mkdir(parents=True)
            (node.folder / "rabbitmq.conf").write_text(
                f"listeners.tcp.default = 127.0.0.1:{node.amqp_port}\n"
                "log.console = false\n"
                "log.file.level = info\n"
            )
            (node.folder / "enabled_plugins").write_text("[].\n")
        for node in self.nodes.values():
            self._launch(node)
        with ThreadPoolExecutor(self.size) as pool:
            list(pool.map(self._wait_booted, self.nodes.values()))
        first = self.nodes[1]
        for node in list(self.nodes.values())[1:]:
            self.ctl(node.number, "stop_app")
            self.ctl(node.number, "join_cluster", first.name)
            self.ctl(node.number, "start_app")
        self.ctl(1, "await_online_nodes", str(self.size), timeout=self.boot_timeout)

    def start_node(self, number: int) -> None:
        """Boot node ``number`` again after :meth:`kill`; it rejoins the cluster on boot.

        Raises:
            ClusterError: it is still running, or did not boot in time.
        """
        node = self.nodes[number]
        if self.pid(number) is not None:
            raise ClusterError(f"{node.name} is already running")
        node.pid_file.unlink(missing_ok=True)
        _wait_port_free(node.amqp_port, 30)
        _wait_port_free(node.dist_port, 30)
        self._launch(node)
        self._wait_booted(node)

    def kill(self, number: int) -> None:
        """``kill -9`` node ``number``'s Erlang VM, as a crash or power loss would.

        Raises:
            ClusterError: the node is not running.
        """
        node = self.nodes[number]
        pid = self.pid(number)
        if pid is None:
            raise ClusterError(f"{node.name} is not running")
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)

    def running(self) -> list[int]:
        """Numbers of the nodes whose VM is alive."""
        return [number for number in self.nodes if self.pid(number) is not None]

    def destroy(self) -> None:
        """``kill -9`` every node of this cluster and delete its folder; never fails."""
        for number in self.nodes:
            pid = self.pid(number)
            if pid is not None:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for pid in _marked_pids(str(self.base)):  # anything else this cluster left behind
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.base, ignore_errors=True)

    @staticmethod
    def remove_orphans() -> list[int]:
        """``kill -9`` the nodes of clusters whose folder is gone (a test session that was
        itself killed before its teardown); return their pids. Clusters still in use keep
        their folder and are left alone."""
        killed = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or _command(int(entry.name)) != "beam.smp":
                continue
            base = _environ(int(entry.name)).get(_MARKER)
            if base and not Path(base).exists():
                try:
                    os.kill(int(entry.name), signal.SIGKILL)
                    killed.append(int(entry.name))
                except ProcessLookupError:
                    pass
        return killed

    def pid(self, number: int) -> int | None:
        """The pid of node ``number``'s Erlang VM, or ``None`` when it is not running."""
        node = self.nodes[number]
        try:
            pid = int(node.pid_file.read_text().strip())
        except (OSError, ValueError):
            pid = None
        if pid is not None and _alive(pid) and _belongs_to(pid, self.base, node.name):
            return pid
        for candidate in _marked_pids(str(self.base), command="beam.smp"):
            if _alive(candidate) and _belongs_to(candidate, self.base, node.name):
                return candidate
        return None

    # --- the CLI -------------------------------------------------------------------------------

    def ctl(self, number: int, *args: str, timeout: float = 120.0) -> str:
        """Run ``rabbitmqctl -n <node> ARGS`` with this cluster's cookie; return its output.

        Raises:
            ClusterError: the command failed or took longer than ``timeout`` seconds.
        """
        return self._cli("rabbitmqctl", number, *args, timeout=timeout)

    def queues(self, number: int, vhost: str) -> list[dict[str, Any]]:
        """Every queue of ``vhost`` as node ``number`` sees it: name, type, leader, members
        and online members."""
        output = self.ctl(
            number, "list_queues", "-p", vhost, "name", "type", "leader", "members", "online",
            "--formatter", "json", "--quiet",
        )  # fmt: skip
        return list(json.loads(output or "[]"))

    def node_number(self, erlang_name: str) -> int:
        """The number of the node called ``erlang_name`` (e.g. a queue's leader)."""
        for number, node in self.nodes.items():
            if node.name == erlang_name:
                return number
        raise ClusterError(f"{erlang_name} is not a node of this cluster")

    def leader(self, vhost: str, queue: str) -> int:
        """The number of the node leading quorum queue ``queue``.

        Raises:
            ClusterError: no running node knows the queue.
        """
        for entry in self.queues(self.running()[0], vhost):
            if entry["name"] == queue:
                return self.node_number(str(entry["leader"]))
        raise ClusterError(f"no queue {queue!r} in vhost {vhost!r}")

    def wait_replicated(self, vhost: str, timeout: float = 60.0) -> None:
        """Wait until every node runs and every quorum queue of ``vhost`` has all its members
        online, so that any one node may be lost next.

        Raises:
            ClusterError: that did not happen within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        lagging: list[str] = ["(not checked yet)"]
        while time.monotonic() < deadline:
            if len(self.running()) == self.size:
                try:
                    entries = self.queues(1, vhost)
                except ClusterError:
                    entries = None
                if entries is not None:
                    lagging = [
                        str(e["name"])
                        for e in entries
                        if e["type"] == "quorum" and len(e["online"]) < self.size
                    ]
                    if not lagging:
                        return
            time.sleep(0.5)
        raise ClusterError(f"quorum queues not fully replicated after {timeout} s: {lagging}")

    def add_vhost(self, vhost: str) -> None:
        """Create ``vhost`` and give user guest every permission in it."""
        self.ctl(1, "add_vhost", vhost)
        self.ctl(1, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")

    def log_tail(self, number: int, lines: int = 30) -> str:
        """The end of node ``number``'s log, for error messages."""
        logs = sorted((self.nodes[number].folder / "log").glob("*.log"))
        if not logs:
            return "(no log)"
        return "\n".join(logs[-1].read_text(errors="replace").splitlines()[-lines:])

    # --- internals -----------------------------------------------------------------------------

    def _env(self, node: ClusterNode) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("RABBITMQ_", "ERL_"))
        }
        env.update(
            HOME=str(self.home),
            RABBITMQ_CONF_ENV_FILE=str(self.base / "rabbitmq-env.conf"),
            RABBITMQ_CONFIG_FILE=str(node.folder / "rabbitmq.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(node.folder / "enabled_plugins"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(node.folder / "advanced.config"),
            RABBITMQ_NODENAME=node.name,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(node.amqp_port),
            RABBITMQ_DIST_PORT=str(node.dist_port),
            RABBITMQ_MNESIA_BASE=str(node.folder / "mnesia"),
            RABBITMQ_LOG_BASE=str(node.folder / "log"),
            RABBITMQ_PID_FILE=str(node.pid_file),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=_LOOPBACK_ONLY,
            RABBITMQ_CTL_ERL_ARGS=_LOOPBACK_ONLY,
            ERL_EPMD_ADDRESS="127.0.0.1",
            **{_MARKER: str(self.base)},
        )
        return env

    def _launch(self, node: ClusterNode) -> None:
        done = subprocess.run(
            [str(RABBITMQ_BIN / "rabbitmq-server"), "-detached"],
            env=self._env(node), cwd=self.base, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if done.returncode != 0:
            raise ClusterError(f"{node.name} did not start: {done.stderr or done.stdout}")

    def _wait_booted(self, node: ClusterNode) -> None:
        deadline = time.monotonic() + self.boot_timeout
        while not node.pid_file.exists():
            if time.monotonic() > deadline:
                raise ClusterError(f"{node.name} wrote no pid file:\n{self.log_tail(node.number)}")
            time.sleep(0.1)
        try:
            self.ctl(
                node.number, "wait", str(node.pid_file), "--timeout",
                str(int(self.boot_timeout)), timeout=self.boot_timeout + 10,
            )  # fmt: skip
        except ClusterError as exc:
            raise ClusterError(f"{exc}\n{self.log_tail(node.number)}") from exc

    def _cli(self, tool: str, number: int, *args: str, timeout: float) -> str:
        node = self.nodes[number]
        try:
            done = subprocess.run(
                [str(RABBITMQ_BIN / tool), "-n", node.name, *args],
                env=self._env(node), cwd=self.base, capture_output=True, text=True,
                timeout=timeout,
            )  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            raise ClusterError(
                f"{tool} {' '.join(args)} on {node.name}: no answer in {timeout} s"
            ) from exc
        if done.returncode != 0:
            raise ClusterError(
                f"{tool} {' '.join(args)} on {node.name} failed ({done.returncode}): "
                f"{done.stderr.strip() or done.stdout.strip()}"
            )
        return done.stdout


def _free_ports(count: int, avoid: set[int] | None = None) -> list[int]:
    """``count`` TCP ports free on 127.0.0.1 now, below the ephemeral range (32768 and up), so
    that no client connection takes a killed node's port before the node restarts."""
    ports: list[int] = []
    taken = set(avoid or ()) | {5672, 15672, 25672, 4369}
    while len(ports) < count:
        port = secrets.randbelow(32000 - 20000) + 20000
        if port in taken:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
        taken.add(port)
    return ports


def _wait_port_free(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
                return
            except OSError:
                time.sleep(0.1)
    raise ClusterError(f"port {port} is still in use after {timeout} s")


def _alive(pid: int) -> bool:
    # A killed VM is re-parented to pid 1, which reaps it lazily: a zombie counts as dead.
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return status.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {key.decode(errors="replace"): value.decode(errors="replace") for key, value in pairs}


def _belongs_to(pid: int, base: Path, name: str) -> bool:
    environ = _environ(pid)
    return environ.get(_MARKER) == str(base) and environ.get("RABBITMQ_NODENAME") == name


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _marked_pids(base: str, *, command: str | None = None) -> list[int]:
    """Every process whose environment carries this cluster's marker (the VMs, their helpers,
    a CLI call in progress), or only those running ``command``. epmd is never among them: it
    is shared with the broker on 5672 whoever started it."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or _environ(int(entry.name)).get(_MARKER) != base:
            continue
        name = _command(int(entry.name))
        if name != "epmd" and (command is None or name == command):
            pids.append(int(entry.name))
    return pids
