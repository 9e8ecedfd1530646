"""What a saga instance is when stored: its record, its timers, the store protocol, the errors.

A record is one row per (saga, key): the lifecycle ``status``, the user's ``phase``, the
state as JSON, the ``version`` every write checks (optimistic concurrency), the compensations
still to run (a stack), the attempts of the one running now, and the history of transitions.
A timer is a durable wake-up: a step's timeout, or the next compensation to run.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from eventbus.errors import EventBusError, PermanentError, TransientError

__all__ = [
    "COMPENSATE",
    "COMPENSATED",
    "COMPENSATING",
    "COMPENSATION_FAILED",
    "COMPLETED",
    "RUNNING",
    "STATUSES",
    "TIMEOUT",
    "Change",
    "SagaConflict",
    "SagaNotFound",
    "SagaNotResumable",
    "SagaRecord",
    "SagaStore",
    "Timer",
    "Transition",
]

RUNNING, COMPENSATING = "running", "compensating"
COMPLETED, COMPENSATED, COMPENSATION_FAILED = "completed", "compensated", "compensation_failed"
STATUSES = (RUNNING, COMPENSATING, COMPLETED, COMPENSATED, COMPENSATION_FAILED)
"""``running`` → ``completed``; or ``running`` → ``compensating`` → ``compensated``, or
→ ``compensation_failed`` (until an operator resumes it: ``compensating`` again)."""

TIMEOUT, COMPENSATE = "timeout", "compensate"
"""The two kinds of timer."""


class SagaConflict(TransientError):
    """Another transition of the same instance committed first (its version moved on).

    Nothing of this one was stored. It is a ``TransientError``: the retry policy runs the
    delivery again, which reads the instance anew and decides again.
    """

    def __init__(self, saga: str, key: str, expected: int | None) -> None:
        self.saga, self.key, self.expected = saga, key, expected
        seen = "did not exist" if expected is None else f"was at version {expected}"
        super().__init__(
            f"saga {saga!r} instance {key!r} changed while this transition was decided (it "
            f"{seen}); nothing was stored, and the transition is retried on the new state"
        )


class SagaNotFound(PermanentError, LookupError):
    """An event (or an operator call) names an instance that was never started."""

    def __init__(self, saga: str, key: str, what: str = "") -> None:
        self.saga, self.key = saga, key
        super().__init__(
            f"saga {saga!r} has no instance {key!r}{what}; only its start event creates one"
        )


class SagaNotResumable(EventBusError):
    """``resume`` was asked of an instance that is not in ``compensation_failed``."""

    def __init__(self, saga: str, key: str, status: str) -> None:
        self.saga, self.key, self.status = saga, key, status
        super().__init__(
            f"saga {saga!r} instance {key!r} is {status}, not compensation_failed: only an "
            "instance whose compensations were given up can be resumed"
        )


@dataclasses.dataclass(frozen=True)
class Transition:
    """One entry of an instance's history: what moved it, from where to where."""

    at: float
    cause: str
    """The event type, ``timeout:<name>``, ``compensate:<name>``, or ``operator:resume``."""
    event_id: str | None
    status: str
    phase: str
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Transition:
        return cls(**data)


@dataclasses.dataclass(frozen=True)
class SagaRecord:
    """An instance as stored (state as JSON data; :class:`SagaInstance` is the typed view)."""

    saga: str
    key: str
    status: str
    phase: str
    data: dict[str, Any]
    version: int
    compensations: tuple[str, ...] = ()
    """Compensations still to run; the last runs first."""
    attempts: int = 0
    """Failed attempts of the compensation that runs next."""
    last_error: str | None = None
    correlation_id: str | None = None
    history: tuple[Transition, ...] = ()
    created_at: float = 0.0
    updated_at: float = 0.0
    state_version: int = 1


@dataclasses.dataclass(frozen=True)
class Timer:
    """A durable wake-up of one instance, due at ``due_at`` on the saga's clock."""

    saga: str
    key: str
    kind: str
    name: str
    due_at: float
    id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex)


@dataclasses.dataclass
class Change:
    """One transition to commit: the record at its new version, and the timers it changes."""

    record: SagaRecord
    expected: int | None
    """The version it was read at (``None``: a new instance)."""
    schedule: list[Timer] = dataclasses.field(default_factory=list)
    cancel: set[str] = dataclasses.field(default_factory=set)
    """Names of this instance's timeouts to remove."""
    cancel_all: bool = False
    claimed: Timer | None = None
    """The timer this transition fires (removed with it; gone already → a conflict)."""


class SagaStore(Protocol):
    """Where instances live: :class:`MemorySagaStore` or :class:`SqlSagaStore`."""

    def middleware(self) -> Sequence[Any]:
        """What the saga's subscriptions run inside (the SQL store's ``Inbox``)."""
        ...

    def transaction(self) -> AbstractAsyncContextManager[Any]:
        """A transaction for a wake-up: yields the session publishes are staged in."""
        ...

    async def claim(self, session: Any, timer: Timer) -> bool:
        """Take ``timer`` in ``session``'s transaction; False when it is gone already."""
        ...

    async def load(
        self, session: Any, saga: str, key: str, *, lock: bool = False
    ) -> SagaRecord | None:
        """The instance, or None; ``lock`` holds it for this transaction (and, on SQLite, takes
        the write lock first, so the transaction never has to upgrade to one)."""
        ...

    async def commit(self, session: Any, change: Change) -> None:
        """Write ``change``; :class:`SagaConflict` when the version moved on."""
        ...

    async def due(self, sagas: Sequence[str], now: float, limit: int) -> list[Timer]: ...

    async def instances(self, saga: str, status: str | None, limit: int) -> list[SagaRecord]: ...

    async def timers(self, saga: str, key: str) -> list[Timer]: ...
