"""``MemorySagaStore``: instances and timers in a dict, for tests and the memory bus.

It checks versions exactly as the SQL store does, so a test sees the same conflicts; it has no
inbox and no outbox, so what a transition publishes is sent once its record is stored (a crash
in between is not a question in memory).
"""

from __future__ import annotations

import contextvars
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from eventbus.sagas.records import TIMEOUT, Change, SagaConflict, SagaRecord, Timer

__all__ = ["MemorySagaStore"]


_CLAIMED: contextvars.ContextVar[list[Timer] | None] = contextvars.ContextVar(
    "eventbus_saga_memory_claims", default=None
)
"""The timers the current "transaction" took: given back if it fails."""


class MemorySagaStore:
    """Saga instances in this process's memory."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], SagaRecord] = {}
        self._timers: dict[str, Timer] = {}

    def middleware(self) -> Sequence[Any]:
        return ()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        claimed: list[Timer] = []
        token = _CLAIMED.set(claimed)
        try:
            yield None  # nothing to stage in: what a transition publishes is sent
        except BaseException:
            for timer in claimed:  # "rolled back": the timer is due again
                self._timers[timer.id] = timer
            raise
        finally:
            _CLAIMED.reset(token)

    async def claim(self, session: Any, timer: Timer) -> bool:
        taken = self._timers.pop(timer.id, None)
        claimed = _CLAIMED.get()
        if taken is not None and claimed is not None:
            claimed.append(taken)
        return taken is not None

    async def load(
        self, session: Any, saga: str, key: str, *, lock: bool = False
    ) -> SagaRecord | None:
        return self.records.get((saga, key))

    async def commit(self, session: Any, change: Change) -> None:
        record = change.record
        current = self.records.get((record.saga, record.key))
        found = None if current is None else current.version
        if found != change.expected:
            raise SagaConflict(record.saga, record.key, change.expected)
        self.records[(record.saga, record.key)] = record
        mine = [t for t in self._timers.values() if (t.saga, t.key) == (record.saga, record.key)]
        for timer in mine:
            if change.cancel_all or (timer.kind == TIMEOUT and timer.name in change.cancel):
                del self._timers[timer.id]
        if change.claimed is not None:
            self._timers.pop(change.claimed.id, None)
        for timer in change.schedule:
            self._timers[timer.id] = timer

    async def due(self, sagas: Sequence[str], now: float, limit: int) -> list[Timer]:
        found = [t for t in self._timers.values() if t.saga in sagas and t.due_at <= now]
        return sorted(found, key=lambda t: t.due_at)[:limit]

    async def instances(self, saga: str, status: str | None, limit: int) -> list[SagaRecord]:
        found = [
            r
            for r in self.records.values()
            if r.saga == saga and (status is None or r.status == status)
        ]
        return sorted(found, key=lambda r: (r.created_at, r.key))[:limit]

    async def timers(self, saga: str, key: str) -> list[Timer]:
        found = [t for t in self._timers.values() if (t.saga, t.key) == (saga, key)]
        return sorted(found, key=lambda t: t.due_at)
