"""Helpers of the sandbox and warm worker tests: a plan user of their own, small limits, hostile
plans, and checks that nothing a plan started outlives it."""

from __future__ import annotations

import os
import shutil
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from node_agent.datasets import Table
from node_agent.sandbox import SandboxPolicy

PLAN_UID = 61000 + os.getpid() % 4000
"""A user of this test run's own (no account needed): RLIMIT_NPROC counts only its processes,
and any process of it left after a test is a leak of that test."""

needs_isolation = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="isolation (plan user, namespaces) needs an agent running as root, and unshare",
)

LIMITS: dict[str, Any] = {
    "user": str(PLAN_UID),
    "memory_limit": 2 * 1024**3,
    "max_processes": 24,
    "max_open_files": 64,
    "max_file_size": 16 * 1024**2,
    "tmp_size": 64 * 1024**2,
    "output_limit": 64 * 1024,
}
"""Small limits, so that no hostile plan can strain the machine."""

SETTINGS: dict[str, Any] = {f"plan_{name}": value for name, value in LIMITS.items()}
"""The same limits as NodeSettings fields."""


def policy(**changes: Any) -> SandboxPolicy:
    """The sandbox of these tests."""
    return SandboxPolicy(**{**LIMITS, **changes})


def breast_cancer_table(rows: int = 200) -> Table:
    x, y = load_breast_cancer(return_X_y=True)
    x = (x[:rows] - x[:rows].mean(axis=0)) / x[:rows].std(axis=0)
    return Table([f"c{j}" for j in range(x.shape[1])] + ["y"], np.column_stack([x, y[:rows]]))


def plan(body: str, *, header: str = "") -> str:
    """Source of a plan class ``P`` built on the ready logistic regression."""
    return (
        textwrap.dedent(header)
        + "\nfrom training_plans import LogisticRegressionPlan\n\n"
        + "class P(LogisticRegressionPlan):\n"
        + textwrap.indent(textwrap.dedent(body), "    ")
    )


def processes_of(uid: int) -> list[int]:
    """Processes whose real user is ``uid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            line = next(x for x in status.splitlines() if x.startswith("Uid:"))
            if int(line.split()[1]) == uid:
                found.append(int(entry.name))
    return found


def processes_with(marker: str) -> list[int]:
    """Processes whose command line holds ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def assert_no_process_left(uid: int = PLAN_UID, timeout: float = 5.0) -> None:
    """Wait a little for the kernel to reap them, then fail if the plan user has processes."""
    deadline = time.monotonic() + timeout
    while processes_of(uid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_of(uid) == []


def rss() -> int:
    """Resident memory of this (the agent's) process, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class RssPeak:
    """Sample this process's resident memory every 20 ms while in use; ``growth`` is the
    highest sample above the one taken on entry."""

    def __init__(self) -> None:
        self.start = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss())

    def __enter__(self) -> RssPeak:
        self.start = self.peak = rss()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())

    @property
    def growth(self) -> int:
        return self.peak - self.start
