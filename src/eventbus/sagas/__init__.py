"""Sagas: long-running processes that remember where they are and undo what they did.

* :class:`Saga` — typed (pydantic) state driven by events: ``@saga.starts(Event)``,
  ``@saga.on(Event, when=phase)``, timeouts, compensations; ``saga.router()`` subscribes it.
* :func:`orchestration` with :class:`Step` — the same, written as an ordered list of steps,
  each with its compensation.
* :class:`SagaWorker` — fires durable timeouts and runs compensations, with their own retries.
* :class:`MemorySagaStore` (tests) and :class:`SqlSagaStore` (SQLite, PostgreSQL: state,
  outbox and inbox in one transaction, a version column against concurrent writers).
* The operator's view: ``saga.list(status)``, ``saga.show(key)``, ``saga.resume(key)``.

See ``docs/sagas.md``. ``SqlSagaStore`` needs ``pip install "eventbus[sql]"``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from eventbus.sagas.definition import WallClock
from eventbus.sagas.memory import MemorySagaStore
from eventbus.sagas.orchestration import Step, orchestration
from eventbus.sagas.records import (
    COMPENSATED,
    COMPENSATING,
    COMPENSATION_FAILED,
    COMPLETED,
    RUNNING,
    STATUSES,
    SagaConflict,
    SagaNotFound,
    SagaNotResumable,
    SagaStore,
    Timer,
    Transition,
)
from eventbus.sagas.saga import Saga, SagaInstance
from eventbus.sagas.step import SagaStep
from eventbus.sagas.worker import SagaWorker

if TYPE_CHECKING:
    from eventbus.sagas.sql import SqlSagaStore

__all__ = [
    "COMPENSATED",
    "COMPENSATING",
    "COMPENSATION_FAILED",
    "COMPLETED",
    "RUNNING",
    "STATUSES",
    "MemorySagaStore",
    "Saga",
    "SagaConflict",
    "SagaInstance",
    "SagaNotFound",
    "SagaNotResumable",
    "SagaStep",
    "SagaStore",
    "SagaWorker",
    "SqlSagaStore",
    "Step",
    "Timer",
    "Transition",
    "WallClock",
    "orchestration",
]


def __getattr__(name: str) -> Any:
    if name == "SqlSagaStore":  # SQLAlchemy is imported only when the SQL store is asked for
        return importlib.import_module("eventbus.sagas.sql").SqlSagaStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
