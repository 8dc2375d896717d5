"""The layers of docs/architecture.md, checked on the source: who may import whom, how big a
module or class may grow, and that the architecture page names every module.

The import graph is read from the source with ``ast`` (imports inside functions included), so
a lazy import cannot hide a dependency the layers forbid.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("broker_net", "training_plans", "node_agent", "researcher", "simulation")

FORBIDDEN: dict[str, tuple[str, ...]] = {
    "broker_net": ("node_agent", "researcher", "simulation", "training_plans"),
    "training_plans": ("broker_net", "node_agent", "researcher", "simulation"),
    "node_agent": ("researcher", "simulation"),
    "researcher": ("node_agent", "simulation"),
}
"""Which packages each package must never import: the wire below both parties, plans beside
it, the parties siblings, the simulation above them all."""

MAX_MODULE_LINES = 430
MAX_CLASS_LINES = 250


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    tree: ast.Module

    @property
    def package(self) -> str:
        return self.name.split(".")[0]

    @property
    def is_face(self) -> bool:
        return self.path.name == "__init__.py"

    @property
    def is_cli(self) -> bool:
        parts = self.name.split(".")
        return any(p == "cli" or p.startswith("cli_") for p in parts) or parts[-1] == "__main__"


def _modules() -> list[Module]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).with_suffix("")
            parts = list(relative.parts)
            if parts[-1] == "__init__":
                parts.pop()
            found.append(Module(".".join(parts), path, ast.parse(path.read_text())))
    return found


MODULES = _modules()
NAMES = {module.name for module in MODULES}
TRANSPORT_MODULES = {name for name in NAMES if name.split(".")[:2] == ["broker_net", "amqp"]}
"""The only modules that speak aio-pika; everything else goes through the Transport protocol."""


def _type_only(module: Module) -> set[int]:
    """The ids of the import statements under ``if TYPE_CHECKING:`` in ``module``."""
    return {
        id(inner)
        for node in ast.walk(module.tree)
        if isinstance(node, ast.If)
        and isinstance(node.test, ast.Name)
        and node.test.id == "TYPE_CHECKING"
        for inner in ast.walk(node)
        if isinstance(inner, ast.Import | ast.ImportFrom)
    }


def _imports(module: Module, *, runtime_only: bool = False) -> Iterator[tuple[str, int, bool]]:
    """(imported module, line, through a package face) for every import in ``module``;
    ``runtime_only`` leaves out the imports made for type checkers only."""
    skipped = _type_only(module) if runtime_only else set()
    for node in ast.walk(module.tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, False
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.name.split(".")
                if not module.is_face:
                    base = base[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            for alias in node.names:
                full = f"{target}.{alias.name}"
                if full in NAMES:
                    yield full, node.lineno, False
                else:
                    yield target, node.lineno, target in NAMES and _is_package(target)


def _is_package(name: str) -> bool:
    return any(m.name == name and m.is_face for m in MODULES)


def _top(name: str) -> str:
    return name.split(".")[0]


def test_every_package_exists() -> None:
    assert {module.package for module in MODULES} == set(PACKAGES)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layers(package: str) -> None:
    broken = [
        f"{module.name}:{line} imports {target}"
        for module in MODULES
        if module.package == package
        for target, line, _ in _imports(module)
        if _top(target) in FORBIDDEN[package]
    ]
    assert broken == []


def test_only_the_transport_modules_import_aio_pika() -> None:
    broken = [
        f"{module.name}:{line} imports {target}"
        for module in MODULES
        if module.name not in TRANSPORT_MODULES
        for target, line, _ in _imports(module)
        if _top(target) in ("aio_pika", "aiormq", "pamqp")
    ]
    assert broken == []


def test_the_library_never_imports_a_cli_module() -> None:
    broken = [
        f"{module.name}:{line} imports {target}"
        for module in MODULES
        if not module.is_cli
        for target, line, _ in _imports(module)
        if target in NAMES and next(m for m in MODULES if m.name == target).is_cli
    ]
    assert broken == []


def test_the_project_imports_from_defining_modules_not_from_faces() -> None:
    """The import rule: a package face is for users; the project's own code imports a name
    from the module that defines it, so no face can create an import cycle."""
    broken = [
        f"{module.name}:{line} imports from the face {target}"
        for module in MODULES
        if not module.is_face
        for target, line, via_face in _imports(module)
        if via_face
    ]
    assert broken == []


def test_no_import_cycles_between_modules() -> None:
    """No cycle at run time; a type annotation may name a module that imports this one."""
    graph = {
        module.name: {
            t for t, _, _ in _imports(module, runtime_only=True) if t in NAMES and t != module.name
        }
        for module in MODULES
        if not module.is_face
    }
    faces = {module.name for module in MODULES if module.is_face}
    for name in graph:
        graph[name] -= faces
    cycles = []
    state: dict[str, int] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph.get(name, ())):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_no_module_is_too_long() -> None:
    long = {
        module.name: lines
        for module in MODULES
        if (lines := len(module.path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def test_no_class_is_too_long() -> None:
    long = {
        f"{module.name}.{node.name}": node.end_lineno - node.lineno + 1
        for module in MODULES
        for node in ast.walk(module.tree)
        if isinstance(node, ast.ClassDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES
    }
    assert long == {}


def test_the_architecture_page_names_every_module() -> None:
    page = (ROOT / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"`([a-z_][a-z0-9_.]*)`", page))
    missing = sorted(module.name for module in MODULES if module.name not in named)
    assert missing == []
    stale = sorted(
        name for name in named if _top(name) in PACKAGES and name not in NAMES and "." in name
    )
    assert stale == [], "docs/architecture.md names modules that do not exist"
