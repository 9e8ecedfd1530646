"""``SqlSagaStore``: instances and timers in SQL (SQLAlchemy; SQLite and PostgreSQL).

Every transition is one transaction, the saga's own or the ``Inbox``'s: the instance row,
written only if its ``version`` is still the one read (else :class:`SagaConflict`, and the
transaction rolls back), the timers it adds or cancels, the messages it publishes (staged in
the outbox) and, for an event, the inbox record of that event. So a crash at any point leaves
either all of a transition or none of it, and a redelivered event is recognised by its inbox
record instead of being applied twice.

* ``eventbus_sagas``, one row per instance, keyed by (``saga``, ``key``): ``status``,
  ``phase``, ``data`` (the state as JSON), ``version``, ``compensations`` (JSON),
  ``attempts``, ``last_error``, ``history`` (JSON), ``correlation_id``, ``state_version``,
  ``created_at``, ``updated_at``.
* ``eventbus_saga_timers``: ``id``, ``saga``, ``key``, ``kind`` (``timeout`` or
  ``compensate``), ``name``, ``due_at`` (seconds on the saga's clock).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from eventbus.errors import ConfigurationError
from eventbus.outbox.inbox import Inbox
from eventbus.outbox.store import Outbox
from eventbus.sagas.records import (
    TIMEOUT,
    Change,
    SagaConflict,
    SagaRecord,
    Timer,
    Transition,
)

__all__ = ["SqlSagaStore"]


class SqlSagaStore:
    """Saga instances in ``engine``'s database, next to ``outbox``'s tables.

    ``outbox`` is the bus's (``EventBus(..., outbox=outbox)``): transitions stage what they
    publish in it, and its inbox table records the events they handled. ``table`` and
    ``timers`` name the two tables, on ``metadata`` (the outbox's unless given), so that one
    Alembic ``target_metadata`` migrates them all; or call :meth:`create_tables`.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        outbox: Outbox,
        table: str = "eventbus_sagas",
        timers: str = "eventbus_saga_timers",
        metadata: sa.MetaData | None = None,
        schema: str | None = None,
    ) -> None:
        if engine.dialect.name not in ("postgresql", "sqlite"):
            raise ConfigurationError(
                f"the saga store supports PostgreSQL and SQLite, not {engine.dialect.name}"
            )
        if not isinstance(outbox, Outbox):
            raise ConfigurationError("SqlSagaStore(outbox=...) takes the bus's eventbus Outbox")
        self.engine, self.outbox = engine, outbox
        self.metadata = metadata if metadata is not None else outbox.metadata
        self.table = _instances(self.metadata, table, schema)
        self.timer_table = _timers(self.metadata, timers, schema)
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        self._inbox = Inbox(engine, outbox=outbox)

    async def create_tables(self, engine: AsyncEngine | None = None) -> None:
        """Create both tables (and their indexes) if they do not exist."""
        async with (engine or self.engine).begin() as connection:
            tables = [self.table, self.timer_table]
            await connection.run_sync(self.metadata.create_all, tables=tables)

    def middleware(self) -> Sequence[Any]:
        return (self._inbox,)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        async with self._sessions() as session, session.begin():
            yield session

    # ---------------------------------------------------------------- transitions
    async def claim(self, session: Any, timer: Timer) -> bool:
        """Delete the timer first: on SQLite this takes the write lock at once, on PostgreSQL
        a second worker firing the same timer waits here and then finds it gone."""
        t = self.timer_table
        result: Any = await _session(session).execute(sa.delete(t).where(t.c.id == timer.id))
        return bool(result.rowcount)

    async def load(
        self, session: Any, saga: str, key: str, *, lock: bool = False
    ) -> SagaRecord | None:
        t, db = self.table, _session(session)
        where = sa.and_(t.c.saga == saga, t.c.key == key)
        query = sa.select(t).where(where)
        if lock and self.engine.dialect.name == "sqlite":
            await db.execute(sa.update(t).where(where).values(version=t.c.version))
        elif lock:
            query = query.with_for_update()
        row = (await db.execute(query)).one_or_none()
        return None if row is None else _record(row)

    async def commit(self, session: Any, change: Change) -> None:
        record, db, t = change.record, _session(session), self.table
        values = _values(record)
        statement: Any
        if change.expected is None:
            statement = (
                self._insert(t)
                .values(**values)
                .on_conflict_do_nothing(index_elements=["saga", "key"])
            )
        else:
            statement = (
                sa.update(t)
                .where(t.c.saga == record.saga, t.c.key == record.key)
                .where(t.c.version == change.expected)
                .values(**values)
            )
        result: Any = await db.execute(statement)
        if not result.rowcount:
            raise SagaConflict(record.saga, record.key, change.expected)
        await self._timers(db, change)

    async def _timers(self, db: AsyncSession, change: Change) -> None:
        t, record = self.timer_table, change.record
        mine = sa.and_(t.c.saga == record.saga, t.c.key == record.key)
        if change.cancel_all:
            await db.execute(sa.delete(t).where(mine))
        elif change.cancel:
            names = t.c.name.in_(sorted(change.cancel))
            await db.execute(sa.delete(t).where(mine, t.c.kind == TIMEOUT, names))
        if change.schedule:
            rows = [
                {"id": x.id, "saga": x.saga, "key": x.key, "kind": x.kind, "name": x.name,
                 "due_at": x.due_at}
                for x in change.schedule
            ]  # fmt: skip
            await db.execute(sa.insert(t), rows)

    # ---------------------------------------------------------------- looking
    async def due(self, sagas: Sequence[str], now: float, limit: int) -> list[Timer]:
        t = self.timer_table
        query = (
            sa.select(t)
            .where(t.c.saga.in_(list(sagas)), t.c.due_at <= now)
            .order_by(t.c.due_at)
            .limit(limit)
        )
        async with self.engine.connect() as connection:
            return [_timer(row) for row in await connection.execute(query)]

    async def instances(self, saga: str, status: str | None, limit: int) -> list[SagaRecord]:
        t = self.table
        query = sa.select(t).where(t.c.saga == saga)
        if status is not None:
            query = query.where(t.c.status == status)
        query = query.order_by(t.c.created_at, t.c.key).limit(limit)
        async with self.engine.connect() as connection:
            return [_record(row) for row in await connection.execute(query)]

    async def timers(self, saga: str, key: str) -> list[Timer]:
        t = self.timer_table
        query = sa.select(t).where(t.c.saga == saga, t.c.key == key).order_by(t.c.due_at)
        async with self.engine.connect() as connection:
            return [_timer(row) for row in await connection.execute(query)]


def _session(session: Any) -> AsyncSession:
    if not isinstance(session, AsyncSession):
        raise ConfigurationError(
            "the SQL saga store writes in the transaction of its Inbox (or its own); the "
            f"saga's subscriptions must keep the middleware it gives them, got {session!r}"
        )
    return session


def _table(metadata: sa.MetaData, name: str, schema: str | None, *items: Any) -> sa.Table:
    """The table, declared once per metadata: several stores (one per worker engine, say)
    on one metadata share it."""
    found = metadata.tables.get(f"{schema}.{name}" if schema else name)
    return found if found is not None else sa.Table(name, metadata, *items, schema=schema)


def _instances(metadata: sa.MetaData, name: str, schema: str | None) -> sa.Table:
    return _table(
        metadata,
        name,
        schema,
        sa.Column("saga", sa.String(255), primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("phase", sa.String(255), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("compensations", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("history", sa.Text(), nullable=False),
        sa.Column("correlation_id", sa.String(255), nullable=True),
        sa.Column("state_version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.Index(f"ix_{name}_saga_status", "saga", "status"),
    )


def _timers(metadata: sa.MetaData, name: str, schema: str | None) -> sa.Table:
    return _table(
        metadata,
        name,
        schema,
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("saga", sa.String(255), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("due_at", sa.Double(), nullable=False),
        sa.Index(f"ix_{name}_due", "saga", "due_at"),
        sa.Index(f"ix_{name}_instance", "saga", "key"),
    )


def _values(record: SagaRecord) -> dict[str, Any]:
    return {
        "saga": record.saga,
        "key": record.key,
        "status": record.status,
        "phase": record.phase,
        "data": json.dumps(record.data),
        "version": record.version,
        "compensations": json.dumps(list(record.compensations)),
        "attempts": record.attempts,
        "last_error": record.last_error,
        "history": json.dumps([t.to_json() for t in record.history]),
        "correlation_id": record.correlation_id,
        "state_version": record.state_version,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
    }


def _record(row: Any) -> SagaRecord:
    return SagaRecord(
        saga=row.saga,
        key=row.key,
        status=row.status,
        phase=row.phase,
        data=json.loads(row.data),
        version=row.version,
        compensations=tuple(json.loads(row.compensations)),
        attempts=row.attempts,
        last_error=row.last_error,
        correlation_id=row.correlation_id,
        history=tuple(Transition.from_json(t) for t in json.loads(row.history)),
        created_at=row.created_at,
        updated_at=row.updated_at,
        state_version=row.state_version,
    )


def _timer(row: Any) -> Timer:
    return Timer(row.saga, row.key, row.kind, row.name, row.due_at, row.id)
