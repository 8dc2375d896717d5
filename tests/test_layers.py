"""The packages import each other in one direction only, and by the modules that define names.

``broker_net`` is what both parties speak; ``node_agent`` and ``researcher`` never import each
other; ``simulation`` sits above both and neither imports it. Inside the project, a name is
imported from the module that defines it, never from a package's ``__init__`` (those faces are
for users, docs, examples and tests).
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "broker_net": {"node_agent", "researcher", "simulation"},
    "node_agent": {"researcher", "simulation"},
    "researcher": {"node_agent", "simulation"},
    "simulation": set(),
}


def _imports(path: Path) -> Iterator[tuple[int, str, list[str]]]:
    """(line, module, names) of every import in ``path``, in functions too."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.lineno, node.module, [alias.name for alias in node.names]


def _sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_package_imports_no_package_above_it(package: str) -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in _sources(package)
        for line, module, _ in _imports(path)
        if module.split(".")[0] in FORBIDDEN[package]
    ]
    assert found == []


@pytest.mark.parametrize("package", ["researcher", "simulation"])
def test_names_are_imported_from_the_modules_that_define_them(package: str) -> None:
    found = []
    for path in _sources(package):
        if path.name == "__init__.py":
            continue
        for line, module, names in _imports(path):
            if module.split(".")[0] not in FORBIDDEN or not _is_package(module):
                continue
            # A submodule may be imported from its package (`from pkg import module`).
            faced = [name for name in names if not _is_module(f"{module}.{name}")]
            if faced:
                found.append(f"{path.relative_to(ROOT)}:{line} from {module} import {faced}")
    assert found == []


def test_the_researcher_face_keeps_its_names() -> None:
    import researcher

    assert set(researcher.__all__) >= {
        "AnalyticsTask", "DiscardOnStall", "DiscardOnTimeout", "Experiment", "ExperimentResult",
        "FARequestJob", "FAResult", "FedJob", "FederatedRequest", "Job", "JobError",
        "JobResult", "JobSpec", "JobStore", "LateReply", "MessagesByNode", "NoReplyError",
        "NodeErrorReply", "NodePresence", "NodeState", "NodeTiming", "PlanApprovalTask",
        "PlanCheckTask", "Policy", "PolicyReport", "PreprocRequestJob", "PreprocResult",
        "PreprocessingTask", "PresenceTable", "RequestError", "RequestHooks", "RequestStatus",
        "RequestTimeoutError", "Requests", "ResearcherSettings", "RoundRecord", "Scheduler",
        "SecureAggregation", "SecureAggregationError", "SpecError", "State", "StopOnDisconnect",
        "StopOnError", "StopOnStall", "StopOnTimeout", "TrainingJob", "TrainingPlanApproveJob",
        "TrainingPlanCheckJob", "TrainingResult", "TrainingTask", "TransitionError", "Verdict",
        "combine_statistics", "fedavg", "weighted_metrics",
    }  # fmt: skip


def _is_package(module: str) -> bool:
    spec = importlib.util.find_spec(module)
    return spec is not None and spec.submodule_search_locations is not None


def _is_module(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False
