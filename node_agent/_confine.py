"""The plan worker's side of the sandbox: applied to itself before any plan code is loaded.

:func:`confine` takes the spec :mod:`node_agent.plan_process` passes on the command line::

    {"uid": 65534 | None, "gid": 65534 | None, "tmp_size": bytes | 0, "work": "/path" | "",
     "limits": {"RLIMIT_AS": ..., ...}, "drop_caps": bool, "result_fd": 7}

In its own namespaces (``tmp_size`` set) the worker starts as PID 1 and (namespace) root: it
mounts a private ``/tmp`` of ``tmp_size`` bytes (and binds folders of it over ``/var/tmp``,
``/dev/shm`` and ``/run/lock``). The folders Python imports from (the interpreter's, the
virtual environment's, the project's) stay reachable: one under a private folder, or behind a
folder the plan user may not enter (a Python installed under ``/root``), is bound again at its
path on an empty folder that hides the rest. Then it forks: PID 1 only reaps, and exits with
the worker's status (``128 + signal`` when it was killed) so the plan never runs as a
namespace's init. The worker then enters its folder, takes its limits, gives up root for
``uid``/``gid`` (or drops every capability, in a user namespace), and can never gain
privileges again.
"""

from __future__ import annotations

import ctypes
import os
import resource
import sys
from pathlib import Path
from typing import Any, NoReturn

_MS_NOSUID, _MS_NODEV, _MS_BIND = 0x2, 0x4, 0x1000
_PR_CAPBSET_DROP, _PR_SET_NO_NEW_PRIVS = 24, 38
_CAP_VERSION_3 = 0x20080522
_BOUND_FOLDERS = ("/var/tmp", "/dev/shm", "/run/lock")
_libc = ctypes.CDLL(None, use_errno=True)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _check(result: int, what: str) -> None:
    if result != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{what}: {os.strerror(error)}")


def confine(spec: dict[str, Any]) -> tuple[int, int]:
    """Confine this process as ``spec`` says; return the (jobs, results) descriptors.

    Standard input becomes ``/dev/null``: the jobs arrive on a private copy of it.
    """
    uid, gid = spec.get("uid"), spec.get("gid")
    if spec.get("tmp_size"):
        _private_mounts(int(spec["tmp_size"]), uid, gid)
        if os.getpid() == 1:
            _become_init()
    work = Path(spec.get("work") or "/tmp/plan")
    work.mkdir(mode=0o700, exist_ok=True)
    if uid is not None:
        os.chown(work, uid, gid if gid is not None else uid)
    os.chdir(work)
    for name, value in spec.get("limits", {}).items():
        limit = getattr(resource, name)
        resource.setrlimit(limit, (int(value), int(value)) if name != "RLIMIT_CPU" else _cpu(value))
    jobs = os.dup(0)
    results = os.dup(int(spec["result_fd"]))
    os.close(int(spec["result_fd"]))
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    if uid is not None:
        os.setgroups([])
        os.setgid(gid if gid is not None else uid)
        os.setuid(uid)
    elif spec.get("drop_caps"):
        _drop_capabilities()
    _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    return jobs, results


def _cpu(seconds: int) -> tuple[int, int]:
    # SIGXCPU at the soft limit, SIGKILL a little later should the plan catch SIGXCPU.
    return int(seconds), int(seconds) + 5


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    result = _libc.mount(
        source.encode(),
        target.encode(),
        fstype.encode() if fstype else None,
        ctypes.c_ulong(flags),
        data.encode() if data else None,
    )
    _check(result, f"mount {target}")


def _private_mounts(size: int, uid: int | None, gid: int | None) -> None:
    needed = _import_folders()
    hidden = {path: _hiding_folder(path, uid, gid) for path in needed}
    handles = {path: os.open(path, os.O_PATH | os.O_DIRECTORY) for path in needed if hidden[path]}
    _mount("tmpfs", "/tmp", "tmpfs", _MS_NOSUID | _MS_NODEV, f"size={size},mode=1777")
    for folder in _BOUND_FOLDERS:
        if os.path.isdir(folder) and not os.path.islink(folder):
            private = "/tmp/." + folder.strip("/").replace("/", "-")
            os.mkdir(private)
            os.chmod(private, 0o1777)
            _mount(private, folder, None, _MS_BIND, None)
    for folder in sorted({f for f in hidden.values() if f and f not in _PRIVATE}):
        _mount("tmpfs", folder, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=1m,mode=0755")
    for path, handle in handles.items():
        os.makedirs(path, mode=0o755, exist_ok=True)
        _mount(f"/proc/self/fd/{handle}", path, None, _MS_BIND, None)
        os.close(handle)


_PRIVATE = ("/tmp", *_BOUND_FOLDERS)


def _import_folders() -> list[str]:
    """The outermost folders Python imports from."""
    found = {
        os.path.realpath(path)
        for path in (sys.base_prefix, sys.prefix, sys.exec_prefix, *sys.path)
        if path and os.path.isdir(path)
    }
    found.discard("/")
    return sorted(p for p in found if not any(p.startswith(q + "/") for q in found))


def _hiding_folder(path: str, uid: int | None, gid: int | None) -> str | None:
    """The outermost folder that would keep the plan from ``path``: a private one, or one it
    may not enter; None when ``path`` stays reachable as it is."""
    parts = path.strip("/").split("/")
    for depth in range(1, len(parts)):
        folder = "/" + "/".join(parts[:depth])
        if folder in _PRIVATE:
            return folder
        if uid is not None and not _enterable(os.stat(folder), uid, gid):
            return folder
    return None


def _enterable(info: os.stat_result, uid: int, gid: int | None) -> bool:
    if info.st_uid == uid:
        return bool(info.st_mode & 0o100)
    if gid is not None and info.st_gid == gid:
        return bool(info.st_mode & 0o010)
    return bool(info.st_mode & 0o001)


def _become_init() -> None:
    """Fork: the child goes on as the worker; this process reaps and exits with its status."""
    worker = os.fork()
    if worker == 0:
        return
    for fd in range(0, 1024):  # keep no pipe of the worker open: its end is its end
        if fd != 2:
            try:
                os.close(fd)
            except OSError:
                pass
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            os._exit(70)
        if pid == worker:
            code = os.waitstatus_to_exitcode(status)
            os._exit(code if code >= 0 else 128 - code)


def _drop_capabilities() -> None:
    for capability in range(64):
        if _libc.prctl(_PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            break  # past the last capability this kernel knows
    header = _CapHeader(_CAP_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.capset(ctypes.byref(header), data), "capset")


def fail(message: str) -> NoReturn:
    """Report a worker that could not confine itself, and exit."""
    print(f"plan worker: cannot enter the sandbox: {message}", file=sys.stderr, flush=True)
    os._exit(71)
