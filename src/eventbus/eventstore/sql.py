"""``EventStore``: event streams in a SQL database (SQLite or PostgreSQL), through SQLAlchemy.

**The global feed is in commit order, and a reader never passes an uncommitted event.** A
position is a number the database hands out at insert, before the transaction commits; if two
appends could take positions side by side, the one with the lower position might commit last,
and a reader that had read up to the higher one would never look back: the event would be
skipped for good. So positions are handed out one transaction at a time:

* On PostgreSQL an append first takes a transaction-scoped advisory lock of the table
  (``pg_advisory_xact_lock``), then reads the stream's version and inserts. The lock is held
  until the transaction ends, and PostgreSQL releases it only after the commit is visible,
  so an append that takes positions after another one sees it committed (or rolled back):
  positions increase in commit order, and everything below a visible position is visible.
  The same lock makes the version check exact.
* SQLite has one writer at a time, who holds the database's write lock from its first write
  to its commit: the same order. An append starts with a write that changes nothing, so it
  holds that lock before it reads the stream's version, and concurrent appends to one
  stream wait for each other instead of colliding on the unique key.

The cost: appends to one store follow each other, across all streams, each holding the lock
from its first statement to its commit (a few round trips and one commit; many events in one
append cost one lock). An append made inside the caller's transaction (``session=``) holds it
until that transaction ends, so every other append waits for it: append last, just before
the commit, and keep such transactions short. (A transaction that appends, then waits for a
row lock another appender holds, is a deadlock PostgreSQL detects and aborts.) Readers never
wait for the lock.

**Publishing what is stored.** ``append(..., publish=True)`` stages the appended envelopes
in the store's ``outbox`` in the same transaction, after the rows: the relay publishes
exactly what was stored, with the same ids, once it commits. On PostgreSQL staging takes the
outbox's per-key locks after the store's lock, so a transaction that does both should append
first and publish other events after (the other order can deadlock with a concurrent append,
which PostgreSQL detects and aborts).

**Idempotent appends.** Event ids are unique in the store. An append whose events are already
stored, in order, right after ``expected_version`` (or anywhere in the stream, for
``expected_version=None``) is a retry of one that committed: it returns the version that
append produced and writes nothing.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from eventbus.envelope import Envelope
from eventbus.errors import ConcurrencyError, ConfigurationError
from eventbus.event import Event
from eventbus.eventstore.appends import (
    Envelopes,
    check_expected,
    check_stream_id,
    decide,
    publish_needs,
)
from eventbus.eventstore.records import EventTypes, StoredEvent
from eventbus.eventstore.schema import envelope_of, events_table, row_of
from eventbus.types import OutboxStage

__all__ = ["EventStore"]

_PAGE = 500
"""Rows a read takes per statement (and ids an id lookup takes per statement)."""
_TRIES = 3
"""How often an append of its own retries after a unique-key race (SQLite, and
PostgreSQL's stricter isolation levels) to report exactly what it found."""


class EventStore:
    """Event streams in the tables ``{prefix}events`` on ``metadata`` (a new one unless given).

    ``service`` is the ``source`` of the envelopes built for appended ``Event`` models;
    ``events`` are the classes a read decodes stored envelopes into. Add ``store.metadata``
    to your Alembic ``target_metadata``, or call :meth:`create_tables`.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        service: str = "app",
        events: Iterable[type[Event]] = (),
        prefix: str = "eventbus_",
        schema: str | None = None,
        metadata: sa.MetaData | None = None,
        outbox: OutboxStage | None = None,
    ) -> None:
        self.engine = check_engine(engine, "EventStore")
        self.outbox = outbox
        """Where ``append(..., publish=True)`` stages what it appends (an ``Outbox``)."""
        self.metadata = metadata if metadata is not None else sa.MetaData()
        self.table = events_table(self.metadata, f"{prefix}events", schema)
        self.types = EventTypes(events)
        self._envelopes = Envelopes(service)
        name = f"eventbus.eventstore:{schema or ''}.{self.table.name}"
        self.lock_key = (zlib.crc32(name.encode()) & 0x7FFFFFFF, 0)
        """The advisory lock an append holds on PostgreSQL until it commits (``pg_locks``:
        ``locktype = 'advisory'``, ``classid``, ``objid``): who holds it holds up appends."""
        self._lock = sa.select(sa.func.pg_advisory_xact_lock(*self.lock_key))
        self._sqlite_lock = (
            sa.update(self.table).where(sa.false()).values(version=self.table.c.version)
        )  # a write that changes nothing: SQLite's write lock, taken before the version read

    async def create_tables(self) -> None:
        """Create the table (and its indexes) if it does not exist."""
        async with self.engine.begin() as connection:
            await connection.run_sync(self.metadata.create_all, tables=[self.table])

    # ---------------------------------------------------------------- appending
    async def append(
        self,
        stream_id: str,
        events: Sequence[Event | Envelope],
        *,
        expected_version: int | None,
        session: AsyncSession | AsyncConnection | None = None,
        publish: bool = False,
    ) -> int:
        """Append ``events`` to the stream and return its new version.

        ``expected_version=n``: the stream must hold exactly ``n`` events now (0: it must not
        exist yet); ``None``: any. Otherwise :class:`~eventbus.errors.ConcurrencyError`, and
        nothing is appended. With ``session`` the events are inserted in that transaction
        (they commit or roll back with it; this never commits); else in one of their own.

        ``publish=True`` also stages the same envelopes in the store's ``outbox``, in the same
        transaction: subscribers on the bus receive exactly what was stored, same ids, once it
        has committed (a retried append that stores nothing stages nothing either).
        """
        stream_id = check_stream_id(stream_id)
        expected = check_expected(expected_version)
        if publish:
            publish_needs(self.outbox, "EventStore(..., outbox=Outbox(...)): where to stage")
        envelopes = self._envelopes(stream_id, events)
        if session is not None:
            connection = await connection_of(session)
            try:
                return await self._append_in(connection, stream_id, expected, envelopes, publish)
            except IntegrityError as exc:  # another transaction got there first
                raise ConcurrencyError(stream_id, expected, None) from exc
        for attempt in range(1, _TRIES + 1):
            try:
                async with self.engine.begin() as connection:
                    return await self._append_in(
                        connection, stream_id, expected, envelopes, publish
                    )
            except IntegrityError as exc:  # read again: now it is committed, and decided
                if attempt == _TRIES:
                    raise ConcurrencyError(stream_id, expected, None) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def _append_in(
        self,
        connection: AsyncConnection,
        stream_id: str,
        expected: int | None,
        envelopes: list[Envelope],
        publish: bool = False,
    ) -> int:
        dialect = connection.dialect.name
        if envelopes and dialect == "postgresql":
            await connection.execute(self._lock)  # positions in commit order: see the module
        elif envelopes and dialect == "sqlite":
            await connection.execute(self._sqlite_lock)  # the write lock before the reads
        current, stored = await self._state(connection, stream_id, [e.id for e in envelopes])
        done = decide(stream_id, expected, current, envelopes, stored)
        if done is not None:
            return done
        if envelopes:
            rows = [row_of(stream_id, current + i, e) for i, e in enumerate(envelopes, 1)]
            await connection.execute(sa.insert(self.table), rows)
            if publish and self.outbox is not None:
                await self.outbox.stage(connection, self._envelopes.messages(envelopes))
        return current + len(envelopes)

    async def _state(
        self, connection: AsyncConnection, stream_id: str, ids: list[str]
    ) -> tuple[int, dict[str, tuple[str, int]]]:
        """The stream's version and where ``ids`` are stored already, in one round trip for
        an append of up to a page of events (the lock is held meanwhile: every round trip
        here is one the other appenders wait for)."""
        if not ids or len(ids) > _PAGE:
            return await self._version(connection, stream_id), await self._stored(connection, ids)
        t = self.table
        version = sa.select(
            sa.literal(None).label("id"),
            sa.literal(stream_id).label("stream_id"),
            sa.func.coalesce(sa.func.max(t.c.version), 0).label("version"),
        ).where(t.c.stream_id == stream_id)
        found = sa.select(t.c.id, t.c.stream_id, t.c.version).where(t.c.id.in_(ids))
        current, stored = 0, {}
        for row in await connection.execute(sa.union_all(version, found)):
            if row.id is None:
                current = int(row.version)
            else:
                stored[row.id] = (row.stream_id, int(row.version))
        return current, stored

    async def _version(self, connection: AsyncConnection, stream_id: str) -> int:
        t = self.table
        query = sa.select(sa.func.max(t.c.version)).where(t.c.stream_id == stream_id)
        return int((await connection.execute(query)).scalar() or 0)

    async def _stored(
        self, connection: AsyncConnection, ids: list[str]
    ) -> dict[str, tuple[str, int]]:
        """Where the given event ids are stored already: ``{id: (stream_id, version)}``."""
        t, found = self.table, {}
        for start in range(0, len(ids), _PAGE):
            query = sa.select(t.c.id, t.c.stream_id, t.c.version).where(
                t.c.id.in_(ids[start : start + _PAGE])
            )
            for row in await connection.execute(query):
                found[row.id] = (row.stream_id, int(row.version))
        return found

    # ---------------------------------------------------------------- reading
    async def stream_version(
        self, stream_id: str, *, session: AsyncSession | AsyncConnection | None = None
    ) -> int:
        """How many events the stream holds (0: it does not exist)."""
        stream_id = check_stream_id(stream_id)
        if session is not None:
            return await self._version(await connection_of(session), stream_id)
        async with self.engine.connect() as connection:
            return await self._version(connection, stream_id)

    async def read(
        self,
        stream_id: str,
        from_version: int = 0,
        *,
        session: AsyncSession | AsyncConnection | None = None,
    ) -> list[StoredEvent]:
        """The stream's events after version ``from_version`` (0: all of them), in order;
        ``[]`` for a stream that does not exist. With ``session``, as that transaction sees it."""
        stream_id = check_stream_id(stream_id)
        t = self.table
        query = (
            sa.select(t)
            .where(t.c.stream_id == stream_id, t.c.version > from_version)
            .order_by(t.c.version)
        )
        if session is not None:
            rows = (await (await connection_of(session)).execute(query)).all()
        else:
            async with self.engine.connect() as connection:
                rows = (await connection.execute(query)).all()
        return [self._record(row) for row in rows]

    async def read_all(
        self, after: int = 0, *, limit: int | None = None
    ) -> AsyncIterator[StoredEvent]:
        """Every stream's events after ``position`` ``after``, in commit order, up to those
        committed now (then it ends; call again with the last position to go on).

        Nothing is ever skipped: an event that commits later gets a later position than every
        event this returned. Rows are read a page at a time, each page in a short read of its
        own: no connection is held while the caller handles what was yielded.
        """
        left = limit
        t = self.table
        while left is None or left > 0:
            page = _PAGE if left is None else min(_PAGE, left)
            query = sa.select(t).where(t.c.position > after).order_by(t.c.position).limit(page)
            async with self.engine.connect() as connection:
                rows = (await connection.execute(query)).all()
            for row in rows:
                yield self._record(row)
            if len(rows) < page:
                return
            after = rows[-1].position
            left = None if left is None else left - len(rows)

    def _record(self, row: Any) -> StoredEvent:
        return self.types.record(
            row.stream_id, int(row.version), int(row.position), envelope_of(row)
        )


def check_engine(engine: object, owner: str) -> AsyncEngine:
    """``engine``, if it is a SQLAlchemy ``AsyncEngine`` (else a ConfigurationError)."""
    if not isinstance(engine, AsyncEngine):
        raise ConfigurationError(
            f"{owner} takes a SQLAlchemy AsyncEngine (create_async_engine(url)), "
            f"not {type(engine).__name__}"
        )
    return engine


def upsert_insert(engine: AsyncEngine, owner: str) -> Any:
    """The ``INSERT`` construct of ``engine``'s dialect that has ``on_conflict_do_*``, for a
    table ``owner`` keeps there; a database other than PostgreSQL or SQLite is refused here,
    when ``owner`` is built, not at its first write."""
    insert = _UPSERTS.get(engine.dialect.name)
    if insert is None:
        raise ConfigurationError(f"{owner} needs PostgreSQL or SQLite, not {engine.dialect.name!r}")
    return insert


_UPSERTS: dict[str, Any] = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


async def connection_of(session: object) -> AsyncConnection:
    """The connection of the caller's ``session`` (an AsyncSession or AsyncConnection)."""
    if isinstance(session, AsyncConnection):
        return session
    if isinstance(session, AsyncSession):
        return await session.connection()
    raise ConfigurationError(
        f"session= takes the SQLAlchemy AsyncSession (or AsyncConnection) whose transaction "
        f"the events commit with, not {type(session).__name__}"
    )
