"""Training plans researchers submitted, and whether the node's operator approved them.

A plan is identified by the SHA-256 of its normalised source, ``ast.unparse(ast.parse(source))``,
so comments and formatting do not change its id while any change to the code does. Plans are
kept in ``<data_dir>/plans.sqlite``. A researcher's :meth:`PlanRegistry.register` only ever
adds a plan as Pending; only the operator (through :meth:`~PlanRegistry.approve` and
:meth:`~PlanRegistry.reject`, e.g. from the ``plans`` command line) changes a status.
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from broker_net.codes import TrainingPlanStatus
from broker_net.sqlite import SqliteStore

_SCHEMA = """
CREATE TABLE IF NOT EXISTS plans (
    plan_id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    status TEXT NOT NULL,
    description TEXT NOT NULL,
    researcher_id TEXT NOT NULL,
    note TEXT NOT NULL,
    registered_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
)
"""
_MIN_PREFIX = 6


class PlanInvalidError(ValueError):
    """Raised when a training plan's source is not valid Python."""


class PlanNotFoundError(KeyError):
    """Raised when no plan has the given id (or id prefix)."""

    def __init__(self, plan_id: str, reason: str = "no training plan has id") -> None:
        super().__init__(plan_id)
        self.plan_id = plan_id
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.reason} {self.plan_id!r}"


def normalise_source(source: str) -> str:
    """Return ``source`` with comments and formatting normalised away.

    Raises:
        PlanInvalidError: ``source`` is not valid Python.
    """
    try:
        return ast.unparse(ast.parse(source))
    except (SyntaxError, ValueError) as exc:
        raise PlanInvalidError(f"the training plan is not valid Python: {exc}") from exc


def compute_plan_id(source: str) -> str:
    """Return the id of a plan: the SHA-256 hex digest of its normalised source.

    Raises:
        PlanInvalidError: ``source`` is not valid Python.
    """
    return hashlib.sha256(normalise_source(source).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class PlanRecord:
    """A registered training plan."""

    plan_id: str
    status: TrainingPlanStatus
    source: str
    description: str
    researcher_id: str
    note: str
    registered_at: str
    updated_at: str


class PlanRegistry(SqliteStore):
    """The training plans of one node, in ``<data_dir>/plans.sqlite``.

    Safe to share between threads. Use it as a context manager, or call :meth:`close`.
    """

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir / "plans.sqlite", [_SCHEMA])
        self._revoke_listeners: list[Callable[[str | None], None]] = []

    def add_revoke_listener(self, listener: Callable[[str | None], None]) -> None:
        """Have ``listener(plan_id)`` called when a plan is rejected through this registry, and
        ``listener(None)`` when the registry closes (no approval it gave holds any longer), so
        what runs a plan (warm plan workers) can stop it at once."""
        self._revoke_listeners.append(listener)

    def _revoked(self, plan_id: str | None) -> None:
        for listener in list(self._revoke_listeners):
            listener(plan_id)

    def close(self) -> None:
        """Tell the revoke listeners, then close the database."""
        try:
            self._revoked(None)
        finally:
            self._revoke_listeners.clear()
            super().close()

    def register(
        self, source: str, *, description: str = "", researcher_id: str = ""
    ) -> PlanRecord:
        """Add a plan as Pending, or return it unchanged if it is already known.

        Registering again never changes a status: a rejected plan stays rejected.

        Raises:
            PlanInvalidError: ``source`` is not valid Python.
        """
        plan_id = compute_plan_id(source)
        now = datetime.now(UTC).isoformat()
        with self._transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO plans VALUES (?, ?, ?, ?, ?, '', ?, ?)",
                (
                    plan_id, source, TrainingPlanStatus.PENDING.value, description,
                    researcher_id, now, now,
                ),
            )  # fmt: skip
        return self.show(plan_id)

    def approve(self, plan_id: str, note: str = "") -> PlanRecord:
        """Approve a plan, so it may run on this node.

        Args:
            plan_id: the plan's id, or a unique prefix of it (at least 6 characters).
            note: why, for the record.

        Raises:
            PlanNotFoundError: no plan (or several) match ``plan_id``.
        """
        return self._set_status(plan_id, TrainingPlanStatus.APPROVED, note)

    def reject(self, plan_id: str, note: str = "") -> PlanRecord:
        """Reject a plan, so it never runs on this node.

        Args:
            plan_id: the plan's id, or a unique prefix of it (at least 6 characters).
            note: why, for the record.

        Raises:
            PlanNotFoundError: no plan (or several) match ``plan_id``.
        """
        record = self._set_status(plan_id, TrainingPlanStatus.REJECTED, note)
        self._revoked(record.plan_id)
        return record

    def _set_status(self, plan_id: str, status: TrainingPlanStatus, note: str) -> PlanRecord:
        full_id = self.resolve(plan_id)
        now = datetime.now(UTC).isoformat()
        with self._transaction() as conn:
            conn.execute(
                "UPDATE plans SET status = ?, note = ?, updated_at = ? WHERE plan_id = ?",
                (status.value, note, now, full_id),
            )
        return self.show(full_id)

    def status(self, source: str) -> TrainingPlanStatus:
        """Return the status of the plan with this source (NOT_REGISTERED when unknown).

        Raises:
            PlanInvalidError: ``source`` is not valid Python.
        """
        plan_id = compute_plan_id(source)
        with self._transaction() as conn:
            row = conn.execute("SELECT status FROM plans WHERE plan_id = ?", (plan_id,)).fetchone()
        return TrainingPlanStatus.NOT_REGISTERED if row is None else TrainingPlanStatus(row[0])

    def list(self, status: TrainingPlanStatus | None = None) -> list[PlanRecord]:
        """Return the registered plans, oldest first, optionally only those with ``status``."""
        query, args = "SELECT * FROM plans", []
        if status is not None:
            query, args = query + " WHERE status = ?", [status.value]
        with self._transaction() as conn:
            rows = conn.execute(query + " ORDER BY registered_at, plan_id", args).fetchall()
        return [_record(row) for row in rows]

    def show(self, plan_id: str) -> PlanRecord:
        """Return a plan with its source and metadata.

        Args:
            plan_id: the plan's id, or a unique prefix of it (at least 6 characters).

        Raises:
            PlanNotFoundError: no plan (or several) match ``plan_id``.
        """
        full_id = self.resolve(plan_id)
        with self._transaction() as conn:
            row = conn.execute("SELECT * FROM plans WHERE plan_id = ?", (full_id,)).fetchone()
        if row is None:
            raise PlanNotFoundError(plan_id)
        return _record(row)

    def resolve(self, plan_id: str) -> str:
        """Return the full id of the plan whose id is or starts with ``plan_id``.

        Raises:
            PlanNotFoundError: no plan matches, several do, or the prefix is too short.
        """
        if len(plan_id) < _MIN_PREFIX:
            raise PlanNotFoundError(plan_id, f"give at least {_MIN_PREFIX} characters of id")
        pattern = plan_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        with self._transaction() as conn:
            rows = conn.execute(
                "SELECT plan_id FROM plans WHERE plan_id LIKE ? ESCAPE '\\' LIMIT 2", (pattern,)
            ).fetchall()
        if len(rows) != 1:
            raise PlanNotFoundError(
                plan_id,
                "several plans have ids starting with" if rows else "no training plan has id",
            )
        return str(rows[0][0])


def _record(row: tuple[Any, ...]) -> PlanRecord:
    plan_id, source, status, description, researcher_id, note, registered, updated = row
    return PlanRecord(
        plan_id=plan_id,
        status=TrainingPlanStatus(status),
        source=source,
        description=description,
        researcher_id=researcher_id,
        note=note,
        registered_at=registered,
        updated_at=updated,
    )
