"""Event sourcing: streams of events as the record of what happened.

* :class:`EventStore` — streams in a SQL database (SQLite, PostgreSQL) with optimistic
  concurrency, idempotent appends and a global feed in commit order.
* :class:`StoredEvent` — one stored event: its stream, version, position and envelope.
* :class:`EventStoreProtocol` — what every store does (the in-memory one for unit tests is
  :class:`eventbus.testing.eventstore.InMemoryEventStore`).
* :class:`Repository` — loads an :class:`~eventbus.aggregate.Aggregate` from its stream and
  saves what its commands recorded, with snapshots (:class:`SnapshotStore` in SQL,
  :class:`InMemorySnapshotStore` for tests).

``EventStore`` and ``SnapshotStore`` need ``pip install "eventbus[sql]"``; they are imported
when first asked for, so the rest of this package works without SQLAlchemy. See
``docs/event-sourcing.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from eventbus.errors import ConfigurationError
from eventbus.eventstore.records import EventStoreProtocol, EventTypes, StoredEvent
from eventbus.eventstore.repository import Repository
from eventbus.eventstore.snapshots import InMemorySnapshotStore, Snapshot, SnapshotStoreProtocol

if TYPE_CHECKING:
    from eventbus.eventstore.sql import EventStore
    from eventbus.eventstore.sqlsnapshots import SnapshotStore

__all__ = [
    "EventStore",
    "EventStoreProtocol",
    "EventTypes",
    "InMemorySnapshotStore",
    "Repository",
    "Snapshot",
    "SnapshotStore",
    "SnapshotStoreProtocol",
    "StoredEvent",
]

_LAZY = {
    "EventStore": "eventbus.eventstore.sql",
    "SnapshotStore": "eventbus.eventstore.sqlsnapshots",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        try:
            module = importlib.import_module(_LAZY[name])
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            if (exc.name or "").partition(".")[0] != "sqlalchemy":
                raise
            raise ConfigurationError(
                f'{name} needs SQLAlchemy and a driver: pip install "eventbus[sql]"'
            ) from exc
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Projections: read models kept up to date from the global feed.
from eventbus.eventstore.projections import Projection, ProjectionContext  # noqa: E402
from eventbus.eventstore.runner import ProjectionFailure, ProjectionRunner  # noqa: E402

__all__ += ["Projection", "ProjectionContext", "ProjectionFailure", "ProjectionRunner"]
