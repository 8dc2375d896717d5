"""A sandboxed plan worker process, from the agent's side: start it, send jobs, read results.

The worker (``python -m node_agent._plan_worker --serve SPEC``) reads jobs from its standard
input and writes results to a pipe of their own, one frame each: an 8-byte big-endian length,
then that many bytes of msgpack (:mod:`broker_net.codec`, never pickle). A result frame longer
than the policy's ``max_result_size`` is refused before it is read. What the worker prints
goes to a third pipe, drained by a thread that keeps only its head and tail
(:class:`OutputCapture`), so no amount of output reaches the agent's memory. Before its
result, a job's pipe may carry progress frames, ``{"progress": {name: number}}``, handed to the
caller as they come.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import signal
import struct
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio.to_thread

from broker_net.codec import decode
from broker_net.errors import DecodeError
from node_agent.sandbox import (
    NAMESPACE_HOME,
    Isolation,
    SandboxPolicy,
    plan_environment,
    process_limits,
    protect_node_files,
    worker_command,
)

_HEADER = struct.Struct(">Q")
_CHUNK = 64 * 1024

ProgressCallback = Callable[[dict[str, Any]], None]
"""Receives the values of each progress frame, in the reading thread; must return at once."""


class WorkerLostError(Exception):
    """The worker died, or broke the protocol, before giving a result."""

    def __init__(self, how: str, output: str) -> None:
        super().__init__(how)
        self.how = how
        self.output = output


def write_frame(fd: int, payload: bytes) -> None:
    """Write one frame to ``fd`` (blocking)."""
    for part in (_HEADER.pack(len(payload)), payload):
        view = memoryview(part)
        while view:
            view = view[os.write(fd, view) :]


def read_frame(fd: int, limit: int) -> bytes | None:
    """Read one frame from ``fd``; None at the end of the stream before a frame.

    Raises:
        ValueError: the frame is longer than ``limit`` bytes, or the stream ends inside it.
    """
    header = _read_exactly(fd, _HEADER.size)
    if header is None:
        return None
    (size,) = _HEADER.unpack(header)
    if size > limit:
        raise ValueError(f"a frame of {size} bytes is over the limit of {limit}")
    body = _read_exactly(fd, size) if size else b""
    if body is None:
        raise ValueError("the stream ended inside a frame")
    return body


def _read_exactly(fd: int, size: int) -> bytes | None:
    buffer = bytearray(size)
    view = memoryview(buffer)
    done = 0
    while done < size:
        count = os.readv(fd, [view[done:]])
        if count == 0:
            if done:
                raise ValueError("the stream ended inside a frame")
            return None
        done += count
    return bytes(buffer)


class OutputCapture:
    """Drain a pipe in a thread, keeping at most ``limit`` bytes: its head and its tail."""

    def __init__(self, fd: int, limit: int) -> None:
        self._fd = fd
        self._half = max(1, limit // 2)
        self._lock = threading.Lock()
        self._head = bytearray()
        self._tail: collections.deque[bytes] = collections.deque()
        self._tail_size = 0
        self._left_out = 0
        self._thread = threading.Thread(target=self._pump, name="plan-output", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        try:
            while chunk := os.read(self._fd, _CHUNK):
                with self._lock:
                    self._add(chunk)
        except OSError:
            pass
        finally:
            os.close(self._fd)

    def _add(self, chunk: bytes) -> None:
        room = self._half - len(self._head)
        if room > 0:
            self._head += chunk[:room]
            chunk = chunk[room:]
        if not chunk:
            return
        self._tail.append(chunk)
        self._tail_size += len(chunk)
        while self._tail_size > self._half:
            excess = self._tail_size - self._half
            first = self._tail[0]
            if len(first) <= excess:
                self._tail.popleft()
                cut = len(first)
            else:
                self._tail[0] = first[excess:]
                cut = excess
            self._tail_size -= cut
            self._left_out += cut

    def take(self) -> str:
        """Return what was captured since the last call, and start afresh."""
        with self._lock:
            data = bytes(self._head)
            if self._left_out:
                data += f"\n[... {self._left_out} bytes of output left out ...]\n".encode()
            data += b"".join(self._tail)
            self._head.clear()
            self._tail.clear()
            self._tail_size = self._left_out = 0
        return data.decode("utf-8", errors="replace")

    def join(self, timeout: float) -> None:
        """Wait at most ``timeout`` seconds for the end of the output."""
        self._thread.join(timeout)


class PlanProcess:
    """One confined plan worker. Start it with :meth:`start`; always end it with :meth:`kill`."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        jobs: int,
        results: int,
        output: OutputCapture,
        isolation: Isolation,
        work: Path | None,
        limit: int,
    ) -> None:
        self._popen = popen
        self._jobs = jobs
        self._results = results
        self._output = output
        self._isolation = isolation
        self._work = work
        self._limit = limit
        self._lock = threading.Lock()

    @classmethod
    def start(cls, policy: SandboxPolicy, isolation: Isolation, *, cpu_seconds: int) -> PlanProcess:
        """Start a worker confined by ``policy`` as far as ``isolation`` allows."""
        uid, gid = isolation.uid, isolation.gid
        if uid is not None and gid is not None:
            for folder in policy.protected:
                protect_node_files(folder, uid, gid)
        work: Path | None = None
        if not isolation.namespaces:
            work = Path(tempfile.mkdtemp(prefix="broker-net-plan-"))
            if uid is not None:
                os.chown(work, uid, gid if gid is not None else uid)
        home = NAMESPACE_HOME if work is None else str(work)
        jobs_read, jobs_write = os.pipe()
        results_read, results_write = os.pipe()
        output_read, output_write = os.pipe()
        spec = {
            "uid": uid,
            "gid": gid,
            "tmp_size": policy.tmp_size if isolation.namespaces else 0,
            "work": "" if work is None else str(work),
            "limits": process_limits(policy, cpu_seconds, own_user=uid is None),
            "drop_caps": isolation.user_namespace,
            "result_fd": results_write,
        }
        try:
            popen = subprocess.Popen(
                worker_command(isolation, spec),
                stdin=jobs_read,
                stdout=output_write,
                stderr=output_write,
                pass_fds=(results_write,),
                cwd=work or "/",
                env=plan_environment(policy, home),
                start_new_session=True,
            )
        except BaseException:
            for fd in (jobs_write, results_read, output_read):
                os.close(fd)
            if work is not None:
                shutil.rmtree(work, ignore_errors=True)
            raise
        finally:
            for fd in (jobs_read, results_write, output_write):
                os.close(fd)
        output = OutputCapture(output_read, policy.output_limit)
        return cls(popen, jobs_write, results_read, output, isolation, work, policy.max_result_size)

    @property
    def pid(self) -> int:
        """The process id of the worker's outermost process (its process group's id)."""
        return self._popen.pid

    @property
    def alive(self) -> bool:
        """Whether the worker is still running."""
        return self._popen.poll() is None

    def exchange(self, job: bytes, on_progress: ProgressCallback | None = None) -> dict[str, Any]:
        """Send one encoded job and return the decoded result (blocking); hand the values of
        each progress frame before it to ``on_progress`` (dropped without one).

        Raises:
            WorkerLostError: the worker died, or sent something that is not a result.
        """
        try:
            write_frame(self._jobs, job)
        except BrokenPipeError:
            raise WorkerLostError(self._exit_description(), self.output()) from None
        except OSError as exc:
            raise WorkerLostError(f"could not be sent its job ({exc})", self.output()) from None
        while True:
            result = self._read_result()
            progress = result.get("progress")
            if "ok" in result or not isinstance(progress, dict):
                return result
            if on_progress is not None:
                on_progress(progress)

    def _read_result(self) -> dict[str, Any]:
        try:
            frame = read_frame(self._results, self._limit)
        except BrokenPipeError:
            frame = None
        except (OSError, ValueError) as exc:
            raise WorkerLostError(f"sent an unreadable result ({exc})", self.output()) from None
        if frame is None:
            raise WorkerLostError(self._exit_description(), self.output())
        try:
            result = decode(frame)
        except DecodeError as exc:
            raise WorkerLostError(f"sent an unreadable result ({exc})", self.output()) from None
        if not isinstance(result, dict):
            raise WorkerLostError("sent a result that is not a mapping", self.output())
        return result

    def _exit_description(self) -> str:
        try:
            code = self._popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return "stopped answering"
        if self._isolation.namespaces and code > 128:
            code = 128 - code  # the namespace's init reports a killed worker as 128 + signal
        self._output.join(timeout=1)
        if code < 0:
            return f"was killed by signal {-code} ({_signal_name(-code)})"
        return f"exited ({code})"

    def output(self, wait: float = 0.0) -> str:
        """What the worker printed since the last call: head and tail only.

        Args:
            wait: seconds to wait for the end of the output (of a worker that ended).
        """
        if wait:
            self._output.join(wait)
        return self._output.take()

    def finish(self, timeout: float) -> int | None:
        """Close the worker's input, so it exits, and wait for it; its exit code, or None."""
        with self._lock:
            if self._jobs >= 0:
                os.close(self._jobs)
                self._jobs = -1
        try:
            code = self._popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        self._output.join(timeout=1)
        return code

    def kill(self) -> None:
        """Kill the worker and everything it started; remove its folder. Safe to repeat."""
        doomed: set[int] = set()
        if not self._isolation.namespaces and self._popen.poll() is None:
            # Without a PID namespace, children that left the process group are found by
            # ancestry, while it is known: the tree is stopped (no more forks), then killed.
            for _ in range(5):
                found = {self._popen.pid, *_descendants(self._popen.pid)}
                _signal_all(found - doomed, signal.SIGSTOP)
                if found <= doomed:
                    break
                doomed |= found
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._popen.pid, signal.SIGKILL)
        _signal_all(doomed, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._popen.wait(timeout=10)
        with self._lock:
            for name in ("_jobs", "_results"):
                fd = getattr(self, name)
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
                    setattr(self, name, -1)
        if self._work is not None:
            shutil.rmtree(self._work, ignore_errors=True)
            self._work = None

    async def akill(self) -> None:
        """:meth:`kill` in a worker thread, shielded from cancellation."""
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self.kill)

    def rss(self) -> int:
        """Resident memory of the worker and every process under it, in bytes."""
        page = os.sysconf("SC_PAGE_SIZE")
        total = 0
        for pid in [self._popen.pid, *_descendants(self._popen.pid)]:
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
        return total


def _signal_all(pids: set[int], number: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, number)


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown"
