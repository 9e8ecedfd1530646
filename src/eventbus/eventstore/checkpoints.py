"""Projection checkpoints in a SQL table, written in the read model's transaction.

| column | meaning |
|---|---|
| ``name`` | the projection's name (primary key) |
| ``position`` | the last global position it applied: every event up to it is in the read model |

The table is ``{prefix}checkpoints``. In the store's own database it takes the store's
prefix, schema and metadata (``eventbus_checkpoints`` next to ``eventbus_events``), so
``store.metadata`` holds it once a runner is made; :meth:`SqlCheckpoints.create_tables`
creates it.

A batch's transaction starts by making sure the projection's row exists (``INSERT … ON
CONFLICT DO NOTHING``) and locking it (``SELECT … FOR UPDATE`` on PostgreSQL; on SQLite that
first insert takes the database's write lock). Two runners of one projection therefore take
turns, and the second reads the checkpoint the first committed: no event is applied twice.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from eventbus.errors import ConfigurationError
from eventbus.eventstore.records import EventStoreProtocol
from eventbus.eventstore.runner import CheckpointTransaction, count_after
from eventbus.eventstore.sql import EventStore, upsert_insert

__all__ = ["SqlCheckpoints", "checkpoints_table"]


def checkpoints_table(metadata: sa.MetaData, name: str, schema: str | None = None) -> sa.Table:
    """The checkpoints table on ``metadata`` (the one already there, for a second runner)."""
    existing = metadata.tables.get(f"{schema}.{name}" if schema else name)
    if existing is not None:
        return existing
    return sa.Table(
        name,
        metadata,
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("position", sa.BigInteger(), nullable=False),
        schema=schema,
    )


class _SqlTransaction:
    def __init__(self, session: AsyncSession, position: int) -> None:
        self.session: Any = session
        self.position = position

    async def move_to(self, position: int) -> None:
        self.position = position  # written once, just before the commit


class SqlCheckpoints:
    """Checkpoints in ``{prefix}checkpoints`` of ``engine``'s database (PostgreSQL, SQLite)."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        prefix: str = "eventbus_",
        schema: str | None = None,
        metadata: sa.MetaData | None = None,
    ) -> None:
        if not isinstance(engine, AsyncEngine):
            raise ConfigurationError(
                f"engine= takes the SQLAlchemy AsyncEngine of the read model's database, "
                f"not {type(engine).__name__}"
            )
        self._insert = upsert_insert(engine, "projection checkpoints")
        self.engine = engine
        self.metadata = metadata if metadata is not None else sa.MetaData()
        self.table = checkpoints_table(self.metadata, f"{prefix}checkpoints", schema)
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def for_store(
        cls,
        store: EventStoreProtocol,
        engine: AsyncEngine,
        prefix: str | None,
        schema: str | None,
        metadata: sa.MetaData | None,
    ) -> SqlCheckpoints:
        """In the store's database the table takes the store's prefix, schema and metadata,
        unless told otherwise."""
        if isinstance(store, EventStore) and engine is store.engine:
            prefix = store.table.name.removesuffix("events") if prefix is None else prefix
            schema = store.table.schema if schema is None else schema
            metadata = store.metadata if metadata is None else metadata
        return cls(
            engine,
            prefix="eventbus_" if prefix is None else prefix,
            schema=schema,
            metadata=metadata,
        )

    async def create_tables(self) -> None:
        """Create the checkpoints table if it does not exist."""
        async with self.engine.begin() as connection:
            await connection.run_sync(self.metadata.create_all, tables=[self.table])

    async def load(self, name: str) -> int:
        t = self.table
        async with self.engine.connect() as connection:
            found = await connection.execute(sa.select(t.c.position).where(t.c.name == name))
            return int(found.scalar() or 0)

    @contextlib.asynccontextmanager
    async def transaction(self, name: str) -> AsyncIterator[CheckpointTransaction]:
        t = self.table
        async with self._sessions() as session, session.begin():
            row = self._insert(t).values(name=name, position=0)
            await session.execute(row.on_conflict_do_nothing(index_elements=["name"]))
            query = sa.select(t.c.position).where(t.c.name == name).with_for_update()
            start = int((await session.execute(query)).scalar_one())
            transaction = _SqlTransaction(session, start)
            yield transaction
            if transaction.position != start:
                update = sa.update(t).where(t.c.name == name)
                await session.execute(update.values(position=transaction.position))

    async def behind(self, store: EventStoreProtocol, after: int) -> tuple[int, int]:
        """(the store's last position, how many events it holds after ``after``)."""
        if not isinstance(store, EventStore):
            return await count_after(store, after)
        t = store.table
        async with store.engine.connect() as connection:
            head = (await connection.execute(sa.select(sa.func.max(t.c.position)))).scalar()
            query = sa.select(sa.func.count()).select_from(t).where(t.c.position > after)
            count = (await connection.execute(query)).scalar()
        return max(int(head or 0), after), int(count or 0)
