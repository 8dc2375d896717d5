"""The one state machine of jobs and tasks, with the transitions it allows.

::

    waiting ──> running ──> success
       │           ├──────> failed   ──┐
       │           ├──────> timeout  ──┼──> waiting   (automatic retry, or ``job rerun``)
       │           └──────> canceled ──┘
       ├──> success   (a task inherited from an earlier job: not run again)
       ├──> failed    (the job cannot start: nodes missing, nothing to inherit)
       └──> canceled  (stopped before it started, or its upstream task failed)

``success`` is final. Every transition is written to the store's history with its reason;
:func:`check_transition` refuses the others, so no state can be reached by accident, for
instance a stopped job rewriting its tasks that had succeeded.
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    """Where a job or a task stands."""

    WAITING = "waiting"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELED = "canceled"
    TIMEOUT = "timeout"

    @property
    def finished(self) -> bool:
        """True for success, failed, canceled and timeout."""
        return self not in (State.WAITING, State.RUNNING)


TRANSITIONS: dict[State, frozenset[State]] = {
    State.WAITING: frozenset({State.RUNNING, State.SUCCESS, State.FAILED, State.CANCELED}),
    State.RUNNING: frozenset({State.SUCCESS, State.FAILED, State.TIMEOUT, State.CANCELED}),
    State.SUCCESS: frozenset(),
    State.FAILED: frozenset({State.WAITING}),
    State.TIMEOUT: frozenset({State.WAITING}),
    State.CANCELED: frozenset({State.WAITING}),
}
"""The states each state may move to."""


class TransitionError(ValueError):
    """Raised when a job or task is asked to move to a state its current one does not allow."""

    def __init__(self, what: str, current: State, wanted: State) -> None:
        super().__init__(f"{what} cannot go from {current.value} to {wanted.value}")
        self.current = current
        self.wanted = wanted


def check_transition(what: str, current: State, wanted: State) -> None:
    """Check that ``current`` may move to ``wanted``.

    Args:
        what: names the job or task in the error message.

    Raises:
        TransitionError: the state machine does not allow it.
    """
    if wanted not in TRANSITIONS[current]:
        raise TransitionError(what, current, wanted)
