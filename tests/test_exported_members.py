"""Every package's ``__all__`` is importable and kept in the order ruff's RUF022 enforces.

Every package counts: the top-level ones and each of their sub-packages (``researcher.requests``,
``researcher.orchestration.store``...), found by walking them.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from types import ModuleType

import pytest

TOP_LEVEL = ("broker_net", "node_agent", "researcher", "simulation", "training_plans")


def _packages() -> tuple[str, ...]:
    found = []
    for name in TOP_LEVEL:
        top = importlib.import_module(name)
        found.append(name)
        found += [
            info.name
            for info in pkgutil.walk_packages(top.__path__, prefix=f"{name}.")
            if info.ispkg
        ]
    return tuple(found)


PACKAGES = _packages()


def _ruff_order(name: str) -> tuple[int, list[int | str]]:
    # RUF022's "isort-style" order: SCREAMING_CASE constants, then CamelCase, then the rest,
    # each group in natural order (digit runs compared as numbers).
    if len(name) > 1 and name.isupper():
        group = 0
    elif name[:1].isupper():
        group = 1
    else:
        group = 2
    natural = [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
    return group, natural


@pytest.fixture(params=PACKAGES)
def package(request: pytest.FixtureRequest) -> ModuleType:
    return importlib.import_module(request.param)


def test_package_declares_all(package: ModuleType) -> None:
    assert isinstance(getattr(package, "__all__", None), list), (
        f"{package.__name__} has no __all__ list"
    )


def test_all_is_sorted(package: ModuleType) -> None:
    exported = list(getattr(package, "__all__", []))
    assert exported == sorted(exported, key=_ruff_order)
    assert len(set(exported)) == len(exported)


def test_every_exported_name_resolves(package: ModuleType) -> None:
    missing = [name for name in getattr(package, "__all__", []) if not hasattr(package, name)]
    assert missing == []


def test_the_sub_packages_are_covered() -> None:
    assert {
        "researcher.cli",
        "researcher.jobs",
        "researcher.orchestration",
        "researcher.orchestration.store",
        "researcher.requests",
        "simulation",
    } <= set(PACKAGES)


def test_ruff_order_example() -> None:
    names = ["encode", "Topology", "PROTOCOL_VERSION", "__version__", "T", "item10", "item2"]
    assert sorted(names, key=_ruff_order) == [
        "PROTOCOL_VERSION",
        "T",
        "Topology",
        "__version__",
        "encode",
        "item2",
        "item10",
    ]
