"""docker-compose.yml read the way ``docker compose`` reads it, and run without a container engine.

:func:`load_compose` interpolates ``${VAR}`` references from an env file as Compose does.
:class:`LocalDeployment` runs each service's command as a local process against the local
broker: the host name ``rabbitmq`` becomes the broker's address, volumes become folders, and
the vhost, namespace and user names become the test's own so that runs never meet.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DEFINITIONS_FILE = ROOT / "deploy" / "rabbitmq" / "definitions.json"
BROKER_SERVICE = "rabbitmq"

_REFERENCE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?])?(?P<arg>[^}]*)\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariableError(KeyError):
    """Raised when a ``${VAR:?message}`` reference finds no value, as Compose refuses to run."""


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines of an env file; comments and blank lines are skipped."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip().strip("'\"")
    return values


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Resolve ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}`` and ``$$``."""

    def resolve(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["bare"]
        value = env.get(name)
        op, arg = match["op"], match["arg"] or ""
        unset = value is None or (value == "" and op is not None and op.startswith(":"))
        if op is not None and op.endswith("-"):
            return arg if unset else str(value)
        if op is not None and op.endswith("?") and unset:
            raise MissingVariableError(f"{name}: {arg}")
        return value or ""

    return _REFERENCE.sub(resolve, text)


def references(text: str) -> dict[str, str | None]:
    """Every variable a text refers to, with its ``:-`` / ``-`` default or ``None``."""
    found: dict[str, str | None] = {}
    for match in _REFERENCE.finditer(text):
        name = match["braced"] or match["bare"]
        if name:
            op = match["op"] or ""
            found[name] = match["arg"] if op.endswith("-") else None
    return found


def load_compose(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """docker-compose.yml as Compose sees it: YAML anchors merged, ``${...}`` resolved.

    Without ``env`` the references are left as written.
    """
    document: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return document if env is None else dict(_interpolate_all(document, env))


def _interpolate_all(value: Any, env: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        return interpolate(value, env)
    if isinstance(value, list):
        return [_interpolate_all(item, env) for item in value]
    if isinstance(value, dict):
        return {key: _interpolate_all(item, env) for key, item in value.items()}
    return value


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's ``environment`` as a dict, whichever of Compose's two forms it uses."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        return dict(item.partition("=")[::2] for item in raw)
    return {key: "" if value is None else str(value) for key, value in raw.items()}


def env_files(service: Mapping[str, Any]) -> list[str]:
    """A service's ``env_file`` entries, as a list."""
    raw = service.get("env_file") or []
    return [raw] if isinstance(raw, str) else list(raw)


def depends_on(service: Mapping[str, Any]) -> dict[str, str]:
    """Each dependency of a service with its condition (list form means ``service_started``)."""
    raw = service.get("depends_on") or {}
    if isinstance(raw, list):
        return dict.fromkeys(raw, "service_started")
    return {name: spec["condition"] for name, spec in raw.items()}


def mounts(service: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of each volume; sources starting with ``.`` or ``/`` are bind mounts."""
    found = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume["source"], volume["target"]
        found.append((source, target))
    return found


def start_order(services: Mapping[str, Any]) -> list[str]:
    """Service names, every one after the services it depends on.

    Raises:
        ValueError: the dependencies form a cycle or name a service that does not exist.
    """
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order:
            return
        if name in visiting or name not in services:
            raise ValueError(f"dependency cycle or unknown service at {name!r}")
        visiting.add(name)
        for dependency in depends_on(services[name]):
            visit(dependency)
        order.append(name)

    for name in services:
        visit(name)
    return order


def command(service: Mapping[str, Any]) -> list[str]:
    """A service's command as an argument list."""
    raw = service["command"]
    return raw.split() if isinstance(raw, str) else list(raw)


def password_variable(user: str) -> str:
    """The variable deploy/rabbitmq/provision.sh reads ``user``'s password from."""
    return user.upper().replace("-", "_") + "_AMQP_PASSWORD"


def localize_definitions(
    document: dict[str, Any],
    *,
    vhost: str,
    namespace: str | None = None,
    users: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """definitions.json moved to ``vhost``, under ``namespace``, with users renamed."""
    text = json.dumps(document)
    if namespace is not None:
        text = text.replace("broker_net", namespace)
    moved: dict[str, Any] = json.loads(text)
    moved["vhosts"] = [{"name": vhost}]
    for key in ("permissions", "topic_permissions", "policies", "exchanges", "queues", "bindings"):
        for item in moved.get(key, []):
            item["vhost"] = vhost
            if "user" in item:
                item["user"] = (users or {}).get(item["user"], item["user"])
    return moved


@dataclass
class Broker:
    """Where the local broker standing in for the ``rabbitmq`` service answers."""

    amqp_host: str
    amqp_port: int
    management_url: str


@dataclass
class LocalDeployment:
    """The compose services as local processes on the local broker.

    Args:
        compose: the interpolated compose document.
        env: the variables it was interpolated with (the ``.env`` of this run).
        folder: where volumes, copied bind mounts and logs go.
        broker: the local broker.
        vhost: the broker vhost standing in for the compose one.
        namespace: the name prefix standing in for the compose one.
        users: compose user name -> this run's user name (users are broker-wide).
    """

    compose: dict[str, Any]
    env: dict[str, str]
    folder: Path
    broker: Broker
    vhost: str
    namespace: str
    users: dict[str, str]
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def services(self) -> dict[str, Any]:
        """The services ``docker compose up`` starts: those in no profile."""
        return {
            name: service
            for name, service in self.compose["services"].items()
            if not service.get("profiles")
        }

    def log(self, name: str) -> str:
        """What a service printed so far."""
        path = self.folder / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, name: str) -> subprocess.Popen[bytes]:
        """Start service ``name``'s command with its environment, translated to this machine."""
        service = self.services[name]
        root = self._container_root(name, service)
        translate = _translator(root, service)
        env = {key: value for key, value in os.environ.items() if not key.startswith("BROKER_NET")}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        for file in env_files(service):
            env.update(self._env_file_values(file))
        for key, value in environment(service).items():
            env[key] = self._service_value(key, translate(value))
        argv = [translate(self._user_argument(arg)) for arg in command(service)]
        logs = self.folder / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with (logs / f"{name}.log").open("ab") as output:
            process = subprocess.Popen(
                argv, env=env, cwd=root, stdout=output, stderr=subprocess.STDOUT
            )
        self.processes[name] = process
        return process

    def stop_all(self, timeout: float = 40.0) -> dict[str, int]:
        """SIGTERM every running service, as ``docker compose stop`` does; their exit codes."""
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        codes = {}
        for name, process in self.processes.items():
            try:
                codes[name] = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                codes[name] = process.wait(timeout=5)
        return codes

    def _env_file_values(self, file: str) -> dict[str, str]:
        # The run's own .env, plus each renamed user's password under the name provision.sh
        # derives from the new user name.
        assert file == ".env", f"unexpected env_file {file!r}"
        values = dict(self.env)
        for old, new in self.users.items():
            if password_variable(old) in values:
                values[password_variable(new)] = values[password_variable(old)]
        return values

    def _service_value(self, key: str, value: str) -> str:
        if key.endswith("_NAMESPACE"):
            return self.namespace
        if key.endswith("_USER") and value in self.users:
            return self.users[value]
        return self._localize_url(value)

    def _localize_url(self, value: str) -> str:
        if not re.match(r"^(amqps?|https?)://", value):
            return value
        parts = urlsplit(value)
        netloc = parts.netloc
        userinfo, _, hostport = netloc.rpartition("@")
        if hostport.split(":")[0] == BROKER_SERVICE:
            port = int(hostport.split(":")[1]) if ":" in hostport else 5672
            if port == 15672:
                hostport = urlsplit(self.broker.management_url).netloc
            else:
                hostport = f"{self.broker.amqp_host}:{self.broker.amqp_port}"
        if userinfo:
            user, _, password = userinfo.partition(":")
            userinfo = f"{self.users.get(user, user)}:{password}@"
        path = parts.path
        if parts.scheme.startswith("amqp"):
            path = "/" + quote(self.vhost, safe="")
        return f"{parts.scheme}://{userinfo}{hostport}{path}"

    def _user_argument(self, argument: str) -> str:
        user, colon, tags = argument.partition(":")
        return f"{self.users[user]}{colon}{tags}" if user in self.users else argument

    def _container_root(self, name: str, service: Mapping[str, Any]) -> Path:
        """A folder standing for the container's file system: each mount target is a link
        to its volume folder (named volume) or to a copy of its source (bind mount)."""
        root = self.folder / "containers" / name
        root.mkdir(parents=True, exist_ok=True)
        for source, target in mounts(service):
            link = root / target.lstrip("/")
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                link.symlink_to(self._volume(source), target_is_directory=True)
        return root

    def _volume(self, source: str) -> Path:
        if not source.startswith((".", "/")):
            folder = self.folder / "volumes" / source
            folder.mkdir(parents=True, exist_ok=True)
            return folder
        copy = self.folder / "binds" / os.path.normpath(source).replace("/", "_")
        if not copy.exists():
            original = (ROOT / source).resolve()
            if original.is_dir():
                shutil.copytree(original, copy)
            else:
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(original, copy)
            definitions = copy / DEFINITIONS_FILE.name
            if definitions.exists():
                moved = localize_definitions(
                    json.loads(definitions.read_text()),
                    vhost=self.vhost, namespace=self.namespace, users=self.users,
                )  # fmt: skip
                definitions.write_text(json.dumps(moved, indent=2))
        return copy


def _translator(root: Path, service: Mapping[str, Any]) -> Callable[[str], str]:
    """Rewrites the container paths a service mounts (``/data``, ``/nodes/...``) to paths
    under ``root``, wherever they stand in a value or a shell command."""
    tops = sorted({Path(target).parts[1] for _, target in mounts(service)})
    if not tops:
        return lambda value: value
    alternatives = "|".join(map(re.escape, tops))
    pattern = re.compile(rf"(?<![\w/.:@-])/({alternatives})(?=/|\s|$)")
    return lambda value: pattern.sub(lambda match: f"{root}/{match[1]}", value)
