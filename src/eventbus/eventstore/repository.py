"""``Repository``: load an aggregate from its stream, save the events its commands recorded.

::

    orders = Repository(store, Order)
    order = await orders.get("o-1")          # its events applied in order
    order.ship(carrier="post")               # a command records events
    await orders.save(order)                 # appended, expecting the version it was loaded at

* **Optimistic concurrency.** ``save`` appends with ``expected_version`` = the version the
  aggregate was loaded at; if another save got there first, the append raises
  :class:`~eventbus.errors.ConcurrencyError` and nothing is stored: load it again, run the
  command again. Saving a new aggregate expects the stream not to exist yet.
* **Stream ids** are ``{stream_prefix}-{id}``; ``stream_prefix`` defaults to the class name.
* **Decoding** uses the event classes the aggregate applies (``@applies``). A stored event
  of an older ``dataversion`` goes through ``upcasters`` first, which may split or drop it,
  as on the bus (:mod:`eventbus.upcasting`).
* **Snapshots** (``snapshots=`` a snapshot store, ``snapshot_every=n``): after a save that
  reaches a multiple of ``n`` events, the state is kept with the version it is at; loading
  starts from the latest snapshot and reads only the events after it. A snapshot taken with
  another ``snapshot_version`` of the aggregate, or other upcasters, is ignored.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import pydantic
import pydantic_core

from eventbus.aggregate import Aggregate
from eventbus.errors import AggregateNotFound, ConfigurationError, DecodeError
from eventbus.event import Event
from eventbus.eventstore.records import EventStoreProtocol, StoredEvent
from eventbus.eventstore.snapshots import Snapshot, SnapshotStoreProtocol
from eventbus.upcasting import Upcasters

__all__ = ["Repository"]

A = TypeVar("A", bound=Aggregate)


class Repository(Generic[A]):
    """Loads and saves the aggregates of one class in an event store."""

    def __init__(
        self,
        store: EventStoreProtocol,
        aggregate: type[A],
        *,
        stream_prefix: str | None = None,
        upcasters: Upcasters | None = None,
        snapshots: SnapshotStoreProtocol | None = None,
        snapshot_every: int | None = None,
    ) -> None:
        if not (isinstance(aggregate, type) and issubclass(aggregate, Aggregate)):
            raise ConfigurationError(f"Repository takes an Aggregate subclass, not {aggregate!r}")
        if (snapshots is None) != (snapshot_every is None):
            raise ConfigurationError(
                "snapshots= and snapshot_every= go together: give both (a snapshot store and "
                "every how many events to take one) or neither"
            )
        if snapshot_every is not None and (
            isinstance(snapshot_every, bool) or not isinstance(snapshot_every, int)
            or snapshot_every < 1
        ):  # fmt: skip
            raise ConfigurationError(
                f"snapshot_every must be an integer >= 1, got {snapshot_every!r}"
            )
        self.store, self.aggregate = store, aggregate
        self.stream_prefix = stream_prefix or aggregate.__name__
        self.upcasters, self.snapshots, self.snapshot_every = upcasters, snapshots, snapshot_every
        self.schema = _schema(aggregate, upcasters)
        """What this repository's snapshots are built with (see :mod:`.snapshots`)."""

    def stream_id(self, aggregate_id: str) -> str:
        return f"{self.stream_prefix}-{aggregate_id}"

    async def get(self, aggregate_id: str, *, missing_ok: bool = False, session: Any = None) -> A:
        """The aggregate with its stored events applied; one that has none raises
        :class:`~eventbus.errors.AggregateNotFound`, or with ``missing_ok`` is a new one."""
        stream_id = self.stream_id(aggregate_id)
        snapshot = await self._snapshot(stream_id, session)
        if snapshot is not None:
            found = self.aggregate.restore(aggregate_id, snapshot.state, snapshot.version)
        else:
            found = self.aggregate(aggregate_id)
        records = await self.store.read(stream_id, found.version, session=session)
        for record in records:
            found.catch_up(self._events(record))
            found.version = record.version  # an upcaster may have split or dropped events
        if found.version == 0 and not missing_ok:
            raise AggregateNotFound(self.aggregate.__name__, aggregate_id, stream_id)
        return found

    async def save(self, aggregate: A, *, session: Any = None, publish: bool = False) -> int:
        """Append the aggregate's pending events; returns its new version (unchanged when it
        had none). With ``session``, in that transaction (the snapshot too); with
        ``publish``, the events are also published (see ``EventStore.append``)."""
        pending = aggregate.pending
        if not pending:
            return aggregate.version
        loaded_at = aggregate.version - len(pending)
        version = await self.store.append(
            self.stream_id(aggregate.id),
            pending,
            expected_version=loaded_at,
            session=session,
            publish=publish,
        )
        aggregate.mark_saved()
        aggregate.version = version
        every = self.snapshot_every
        if self.snapshots is not None and every and version // every > loaded_at // every:
            state = aggregate.snapshot()
            snapshot = Snapshot(self.stream_id(aggregate.id), version, self.schema, state)
            await self.snapshots.put(snapshot, session=session)
        return version

    async def _snapshot(self, stream_id: str, session: Any) -> Snapshot | None:
        if self.snapshots is None:
            return None
        snapshot = await self.snapshots.get(stream_id, session=session)
        return snapshot if snapshot is not None and snapshot.schema == self.schema else None

    def _events(self, record: StoredEvent) -> list[Event]:
        """The events of the aggregate's classes that ``record`` holds (upcast if older)."""
        envelope = record.envelope
        cls = self.aggregate.event_classes.get(envelope.type)
        if cls is None:
            raise DecodeError(
                f"stream {record.stream_id!r} version {record.version} holds a "
                f"{envelope.type!r}, which {self.aggregate.__name__} applies no method for: "
                f"add one with @applies"
            )
        if isinstance(record.event, cls):
            return [record.event]
        upcasters = self.upcasters
        payloads: list[Any]
        if upcasters is not None and (envelope.dataversion or 1) < cls.event_version:
            payloads = upcasters.payloads(envelope, cls.event_version)
        else:
            payloads = [pydantic_core.from_json(envelope.data) if envelope.data else None]
        try:
            return [cls.model_validate(payload) for payload in payloads]
        except pydantic.ValidationError as exc:
            raise DecodeError(
                f"stream {record.stream_id!r} version {record.version}: the stored "
                f"{envelope.type!r} does not validate as {cls.__qualname__}: {exc}"
            ) from exc


def _schema(aggregate: type[Aggregate], upcasters: Upcasters | None) -> str:
    """The aggregate's ``snapshot_version`` and the upcasters of the types it applies."""
    steps = upcasters.steps(aggregate.event_classes) if upcasters is not None else []
    return f"{aggregate.__qualname__}:{aggregate.snapshot_version}" + "".join(
        f"|{name}" for name in steps
    )
