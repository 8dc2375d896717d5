"""What a training plan's process may reach, and how the agent confines it.

A plan runs only after its operator approved its exact source; the sandbox is defence in depth
behind that approval. Every plan process gets:

- a minimal environment (``PATH``, ``LANG``, ``HOME`` and ``TMPDIR`` set to its own folder, the
  ``PYTHON*`` variables that import numpy and this project, the OpenBLAS / OpenMP variables
  with the thread limit), nothing of the node's settings;
- a private working folder as its current directory, its inputs through a pipe, nothing else;
- resource limits (address space, CPU seconds, open files, file size, processes);
- its output read through a pipe of which only the head and tail are kept.

How much more is enforced depends on who runs the agent (see :func:`detect_isolation`):

- **root** (with util-linux ``unshare``): the plan runs as :attr:`SandboxPolicy.user` (by
  default ``nobody``) in new network, PID and mount namespaces: no network interface but a
  loopback that is down, every process it starts dies with it, a private size-capped ``/tmp``
  (also over ``/var/tmp``, ``/dev/shm`` and ``/run/lock``) that vanishes with it. The node's
  data folder is closed to other users and its key files made 0600 (:func:`protect_node_files`).
- **another user**, where unprivileged user namespaces work: the same namespaces, the plan's
  capabilities dropped, but the plan runs as the agent's user and can read what it can read.
- otherwise: limits, environment and folder only; the agent logs what is not enforced, once.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from node_agent.settings import NodeSettings

logger = logging.getLogger(__name__)

_PACKAGE_ROOT = Path(__file__).resolve().parents[1]
_SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
_PASSED_PREFIXES = ("OPENBLAS_", "OMP_", "MKL_")
"""Environment variables a numerical library needs to run right on this processor."""
_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
NAMESPACE_HOME = "/tmp/plan"
"""The plan's folder inside its own mount namespace, on its private ``/tmp``."""
_STARTUP_CPU_SECONDS = 30
"""CPU seconds a worker may spend starting (imports) besides its rounds."""


@dataclass(frozen=True)
class SandboxPolicy:
    """The limits and isolation of training plan processes (see the module docs)."""

    isolate: bool = True
    """Separate user and namespaces where the machine allows them; off: limits only."""
    user: str = "nobody"
    memory_limit: int = 4 * 1024**3
    max_processes: int = 64
    max_open_files: int = 256
    max_file_size: int = 512 * 1024**2
    tmp_size: int = 512 * 1024**2
    threads: int = 1
    output_limit: int = 64 * 1024
    max_result_size: int = 1024**3
    protected: tuple[Path, ...] = field(default=())
    """Folders plans must not read: closed to the plan user when it is another user."""

    @classmethod
    def from_settings(cls, settings: NodeSettings) -> SandboxPolicy:
        """The node's policy: its ``plan_*`` settings; its data folder is protected."""
        return cls(
            isolate=settings.plan_sandbox,
            user=settings.plan_user,
            memory_limit=settings.plan_memory_limit,
            max_processes=settings.plan_max_processes,
            max_open_files=settings.plan_max_open_files,
            max_file_size=settings.plan_max_file_size,
            tmp_size=settings.plan_tmp_size,
            threads=settings.plan_threads,
            output_limit=settings.plan_output_limit,
            max_result_size=settings.plan_max_result_size,
            protected=(settings.data_dir,),
        )

    @classmethod
    def limits_only(cls) -> SandboxPolicy:
        """Limits, environment and folder, but the agent's own user, network and processes."""
        return cls(isolate=False)

    def cpu_seconds(self, timeout: float, rounds: int = 1) -> int:
        """The RLIMIT_CPU of a worker serving ``rounds`` rounds of at most ``timeout`` s each."""
        return int(timeout + 1) * rounds + _STARTUP_CPU_SECONDS


@dataclass(frozen=True)
class Isolation:
    """What this machine lets the agent enforce on plan processes."""

    uid: int | None = None
    """Run the plan as this user (the agent is root), or as the agent's user when None."""
    gid: int | None = None
    unshare: str | None = None
    """util-linux ``unshare``: new network, PID and mount namespaces when set."""
    user_namespace: bool = False
    """The namespaces come with a user namespace (an agent that is not root)."""
    missing: tuple[str, ...] = ()
    """What is not enforced, for the log and the docs."""

    @property
    def namespaces(self) -> bool:
        """Whether the plan gets its own network, PID and mount namespaces."""
        return self.unshare is not None

    def command_prefix(self) -> list[str]:
        """What runs the worker command in the namespaces."""
        if self.unshare is None:
            return []
        user = ["--user", "--map-root-user"] if self.user_namespace else []
        return [
            self.unshare, *user, "--net", "--pid", "--mount", "--mount-proc",
            "--fork", "--kill-child", "--",
        ]  # fmt: skip


def detect_isolation(policy: SandboxPolicy) -> Isolation:
    """What can be enforced for ``policy`` here; the first answer for each policy is logged.

    Raises:
        ValueError: the policy names a plan user that does not exist.
    """
    return _detect(policy.isolate, policy.user, os.geteuid())


@cache
def _detect(isolate: bool, user: str, euid: int) -> Isolation:
    if not isolate:
        isolation = Isolation(missing=("isolation is off (plan_sandbox=false)",))
        logger.warning(
            "training plans are not isolated: they run as the agent's user, with its network "
            "and its view of the files (plan_sandbox is off); only resource limits apply"
        )
        return isolation
    unshare = shutil.which("unshare")
    if euid == 0:
        uid, gid = _resolve_user(user)
        if unshare and not _namespaces_work(unshare):
            unshare = None  # e.g. a container without CAP_SYS_ADMIN
        missing = () if unshare else ("network, process and /tmp isolation",)
        isolation = Isolation(uid=uid, gid=gid, unshare=unshare, missing=missing)
        if unshare:
            logger.info(
                "training plans run as uid %d with no network, in their own process and "
                "mount namespaces", uid
            )  # fmt: skip
        else:
            logger.warning(
                "training plans run as uid %d but keep the network and the host's /tmp: "
                "util-linux 'unshare' is missing or cannot make namespaces here", uid
            )  # fmt: skip
        return isolation
    missing = ("a separate user: plans can read what the agent's user can read",)
    if unshare and _namespaces_work(unshare, "--user", "--map-root-user"):
        logger.warning(
            "the agent does not run as root: training plans run as its user and can read its "
            "files (the data folder, the identity key); their network, processes and /tmp "
            "are isolated by a user namespace"
        )
        return Isolation(unshare=unshare, user_namespace=True, missing=missing)
    logger.warning(
        "the agent does not run as root and user namespaces are not available: training "
        "plans run as its user with its network; only resource limits, a minimal environment "
        "and a private folder apply"
    )
    return Isolation(missing=(*missing, "network, process and /tmp isolation"))


def _resolve_user(user: str) -> tuple[int, int]:
    name, _, group = user.partition(":")
    try:
        entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
        uid, gid = entry.pw_uid, entry.pw_gid
    except KeyError:
        if not name.isdigit():
            raise ValueError(f"plan_user {user!r}: no such user") from None
        uid = gid = int(name)  # a numeric id needs no account
    if group:
        gid = int(group)
    if uid == 0:
        raise ValueError("plan_user must not be root")
    return uid, gid


def _namespaces_work(unshare: str, *user: str) -> bool:
    probe = [unshare, *user, "--net", "--pid", "--mount", "--mount-proc", "--fork", "true"]
    try:
        return subprocess.run(probe, capture_output=True, timeout=10, check=False).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def worker_command(isolation: Isolation, spec: dict[str, Any]) -> list[str]:
    """The command line of a plan worker confined by ``spec`` (see node_agent._confine)."""
    # -P: the current folder (the plan's, later) is not on the import path.
    worker = [sys.executable, "-P", "-m", "node_agent._plan_worker", "--serve", json.dumps(spec)]
    return [*isolation.command_prefix(), *worker]


def plan_environment(policy: SandboxPolicy, home: str) -> dict[str, str]:
    """The whole environment of a plan process: nothing of the agent's settings or secrets."""
    env = {
        "PATH": _SAFE_PATH,
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "HOME": home,
        "TMPDIR": home,
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(_PACKAGE_ROOT), os.environ.get("PYTHONPATH")])
        ),
        "PYTHONNOUSERSITE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",  # what a plan printed reaches the log even if it dies
    }
    for name in ("LC_ALL", "PYTHONHOME"):
        if name in os.environ:
            env[name] = os.environ[name]
    for name, value in os.environ.items():
        if name.startswith(_PASSED_PREFIXES):
            env[name] = value
    env.update(dict.fromkeys(_THREAD_VARIABLES, str(policy.threads)))
    return env


def process_limits(policy: SandboxPolicy, cpu_seconds: int, *, own_user: bool) -> dict[str, int]:
    """The rlimits of a plan process, by ``resource`` constant name.

    RLIMIT_NPROC counts every process and thread of the plan's real user: for a plan that runs
    as the agent's own user the processes that user already has are added.
    """
    processes = policy.max_processes
    if own_user:
        processes += _processes_of(os.getuid())
    return {
        "RLIMIT_AS": policy.memory_limit,
        "RLIMIT_CPU": cpu_seconds,
        "RLIMIT_NOFILE": policy.max_open_files,
        "RLIMIT_FSIZE": policy.max_file_size,
        "RLIMIT_NPROC": processes,
        "RLIMIT_CORE": 0,
    }


def _processes_of(uid: int) -> int:
    count = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                count += len(os.listdir(entry / "task")) if entry.stat().st_uid == uid else 0
            except OSError:
                continue
    return count


_protected: set[tuple[Path, int]] = set()


def protect_node_files(folder: Path, uid: int, gid: int) -> None:
    """Keep ``folder`` (a node's data folder) out of reach of the plan user ``uid``.

    Its identity key files are made 0600 and its ``identity`` folder 0700 when they are more
    open; the folder itself loses its permissions for other users (and for its group, when
    that is the plan's group). Done once per folder and user; every change is logged.
    """
    if (folder, uid) in _protected or not folder.exists():
        return
    identity = folder / "identity"
    if identity.is_dir():
        _tighten(identity, 0o077)
        for key in identity.glob("*.key"):
            _tighten(key, 0o077)
    info = folder.stat()
    closed = 0o007 | (0o070 if info.st_gid == gid else 0)
    _tighten(folder, closed)
    if info.st_uid == uid:
        logger.warning("the data folder %s belongs to the plan user %d", folder, uid)
    _protected.add((folder, uid))


def _tighten(path: Path, bits: int) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & bits:
        path.chmod(mode & ~bits)
        logger.warning(
            "%s was open to training plans (mode %#o); it is now %#o", path, mode, mode & ~bits
        )
