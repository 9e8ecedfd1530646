"""Snapshots: an aggregate's state at a version, so that loading it reads only what came after.

A snapshot is a cache, never the record: the events are. It carries the ``schema`` it was
taken with (the aggregate's ``snapshot_version`` and the upcasters its events went through);
a repository ignores a snapshot of another schema and rebuilds from the events, so changing
an aggregate's state layout, or adding an upcaster, needs no migration of snapshots.

* :class:`SnapshotStoreProtocol` — what a repository needs;
* :class:`InMemorySnapshotStore` — for unit tests;
* :class:`~eventbus.eventstore.sqlsnapshots.SnapshotStore` — a table next to the events
  (needs SQLAlchemy; ``from eventbus.eventstore import SnapshotStore``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

from eventbus.errors import ConfigurationError

__all__ = ["InMemorySnapshotStore", "Snapshot", "SnapshotStoreProtocol"]


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    """The state of the aggregate of ``stream_id`` after its event ``version``."""

    stream_id: str
    version: int
    schema: str
    """What the state was built with: a repository ignores a snapshot of another schema."""
    state: dict[str, Any]
    """JSON-ready values (what :meth:`eventbus.aggregate.Aggregate.snapshot` returned)."""


class SnapshotStoreProtocol(Protocol):
    """Where a repository keeps snapshots: the latest one per stream."""

    async def get(self, stream_id: str, *, session: Any = None) -> Snapshot | None: ...

    async def put(self, snapshot: Snapshot, *, session: Any = None) -> None:
        """Keep ``snapshot`` unless one of a later version is kept already."""
        ...


class InMemorySnapshotStore:
    """Snapshots in a dict, for unit tests (``session=`` is refused: there is none)."""

    def __init__(self) -> None:
        self.snapshots: dict[str, Snapshot] = {}

    async def get(self, stream_id: str, *, session: Any = None) -> Snapshot | None:
        _no_session(session)
        return self.snapshots.get(stream_id)

    async def put(self, snapshot: Snapshot, *, session: Any = None) -> None:
        _no_session(session)
        kept = self.snapshots.get(snapshot.stream_id)
        if kept is None or kept.version <= snapshot.version:
            self.snapshots[snapshot.stream_id] = snapshot


def _no_session(session: Any) -> None:
    if session is not None:
        raise ConfigurationError(
            "the in-memory snapshot store has no transactions: leave session= out"
        )
