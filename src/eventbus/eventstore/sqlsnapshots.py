"""``SnapshotStore``: the latest snapshot of each stream, in a table next to the events.

| column | meaning |
|---|---|
| ``stream_id`` | the stream (primary key: one snapshot per stream, the latest) |
| ``version`` | the stream version the state is at |
| ``schema`` | what the state was built with (see :mod:`.snapshots`) |
| ``state`` | the state, as JSON |

A put never replaces a snapshot of a later version (two savers racing keep the newer).
"""

from __future__ import annotations

from typing import Any

import pydantic_core
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from eventbus.eventstore.snapshots import Snapshot
from eventbus.eventstore.sql import check_engine, connection_of, upsert_insert

__all__ = ["SnapshotStore"]


class SnapshotStore:
    """Snapshots in the table ``{prefix}snapshots`` on ``metadata`` (give the event store's,
    ``store.metadata``, to keep both in one Alembic target)."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        prefix: str = "eventbus_",
        schema: str | None = None,
        metadata: sa.MetaData | None = None,
    ) -> None:
        self.engine = check_engine(engine, "SnapshotStore")
        self._insert = upsert_insert(self.engine, "SnapshotStore")
        self.metadata = metadata if metadata is not None else sa.MetaData()
        self.table = sa.Table(
            f"{prefix}snapshots",
            self.metadata,
            sa.Column("stream_id", sa.String(255), primary_key=True),
            sa.Column("version", sa.BigInteger(), nullable=False),
            sa.Column("schema", sa.String(255), nullable=False),
            sa.Column("state", sa.Text(), nullable=False),
            schema=schema,
        )

    async def create_tables(self) -> None:
        """Create the table if it does not exist."""
        async with self.engine.begin() as connection:
            await connection.run_sync(self.metadata.create_all, tables=[self.table])

    async def get(
        self, stream_id: str, *, session: AsyncSession | AsyncConnection | None = None
    ) -> Snapshot | None:
        query = sa.select(self.table).where(self.table.c.stream_id == stream_id)
        if session is not None:
            row = (await (await connection_of(session)).execute(query)).first()
        else:
            async with self.engine.connect() as connection:
                row = (await connection.execute(query)).first()
        if row is None:
            return None
        state: dict[str, Any] = pydantic_core.from_json(row.state)
        return Snapshot(row.stream_id, int(row.version), row.schema, state)

    async def put(
        self, snapshot: Snapshot, *, session: AsyncSession | AsyncConnection | None = None
    ) -> None:
        """Keep ``snapshot`` unless a later one is kept already."""
        if session is not None:
            await self._put(await connection_of(session), snapshot)
            return
        async with self.engine.begin() as connection:
            await self._put(connection, snapshot)

    async def _put(self, connection: AsyncConnection, snapshot: Snapshot) -> None:
        """One upsert that keeps the later version (``ON CONFLICT … WHERE``, which SQLite
        and PostgreSQL both have): racing savers never move a snapshot back."""
        t = self.table
        values = {
            "stream_id": snapshot.stream_id,
            "version": snapshot.version,
            "schema": snapshot.schema,
            "state": pydantic_core.to_json(snapshot.state).decode(),
        }
        insert = self._insert(t).values(values)
        statement = insert.on_conflict_do_update(
            index_elements=[t.c.stream_id],
            set_={k: insert.excluded[k] for k in ("version", "schema", "state")},
            where=t.c.version < insert.excluded.version,
        )
        await connection.execute(statement)
