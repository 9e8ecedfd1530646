"""``SqlIdempotencyStore``: idempotency claims in a SQL table (SQLAlchemy 2, async).

Table ``eventbus_idempotency(group, event_id, status, lease_until, owner, updated_at, result)``,
primary key ``(group, event_id)``; times are seconds since the epoch; ``result`` is what
``complete(..., result=)`` kept (a stored HTTP response). ``lease_until`` is when the row
stops counting: the end of the lease for a ``running`` row, the end of retention for a ``done``
row.

A claim is one transaction around one statement: ``INSERT … ON CONFLICT (group, event_id) DO
UPDATE … WHERE lease_until <= now RETURNING owner`` inserts the row or takes over an expired one;
when nothing is returned, the row that refused it is read in the same transaction to say
whether it is done or busy. On PostgreSQL the conflicting row is locked by the upsert; on SQLite
the upsert's write takes the database write lock at once (as ``BEGIN IMMEDIATE`` would), so two
claimers never both win. SQLite (``sqlite+aiosqlite``) and PostgreSQL (``postgresql+asyncpg``)
are supported. Leases compare the *application's* wall clock across processes; keep hosts in
NTP sync and leases well above their skew.

Needs ``pip install "eventbus[sql]"``. The claim is not part of the handler's own transaction:
see ``docs/idempotency.md`` for the gap that leaves. :meth:`SqlIdempotencyStore.complete_in`
marks a key done inside the caller's session instead, so the marker commits with the work.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from eventbus.errors import ConfigurationError
from eventbus.middleware.idempotency import Claim, ClaimStatus

try:
    import sqlalchemy as sa
    from sqlalchemy.dialects import postgresql, sqlite
    from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ConfigurationError(
        'SqlIdempotencyStore needs SQLAlchemy and a driver: pip install "eventbus[sql]"'
    ) from exc

__all__ = ["SqlIdempotencyStore", "idempotency_table"]

_RUNNING, _DONE = "running", "done"


def idempotency_table(
    metadata: sa.MetaData, name: str = "eventbus_idempotency", schema: str | None = None
) -> sa.Table:
    """The table definition, on ``metadata`` (add it to your Alembic metadata to migrate it)."""
    return sa.Table(
        name,
        metadata,
        sa.Column("group", sa.String(255), primary_key=True),
        sa.Column("event_id", sa.String(255), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("lease_until", sa.Double(), nullable=False),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.Column("result", sa.LargeBinary(), nullable=True),
        sa.Index(f"ix_{name}_lease_until", "lease_until"),
        schema=schema,
    )


class SqlIdempotencyStore:
    """Claims in a SQL table; see the module documentation.

    ``engine`` is an ``AsyncEngine`` or a URL (the store then owns the engine; ``close()`` it).
    ``now`` returns wall-clock seconds since the epoch (injectable for tests). Call
    ``create_table()`` once, or create the table with your migrations.
    """

    def __init__(
        self,
        engine: AsyncEngine | str,
        *,
        table: str = "eventbus_idempotency",
        schema: str | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._owns_engine = isinstance(engine, str)
        self.engine = create_async_engine(engine) if isinstance(engine, str) else engine
        dialect = self.engine.dialect.name
        if dialect not in ("sqlite", "postgresql"):
            raise ConfigurationError(
                f"SqlIdempotencyStore supports SQLite and PostgreSQL, not {dialect!r}"
            )
        self._insert: Any = sqlite.insert if dialect == "sqlite" else postgresql.insert
        self.table = idempotency_table(sa.MetaData(), table, schema)
        self._now = now

    async def create_table(self) -> None:
        """Create the table and its index if they do not exist."""
        async with self.engine.begin() as conn:
            await conn.run_sync(self.table.metadata.create_all, checkfirst=True)

    async def claim(self, group: str, event_id: str, *, owner: str, lease: float) -> Claim:
        now = self._now()
        upsert = self._upsert(
            group, event_id, _RUNNING, owner, now, until=now + lease, only_if_expired=True
        ).returning(self.table.c.owner)
        async with self.engine.begin() as conn:
            if (await conn.execute(upsert)).first() is not None:
                return Claim(ClaimStatus.ACQUIRED)
            row = (await conn.execute(self._select(group, event_id))).first()
        if row is None:  # deleted between the statements; impossible under the row lock
            return Claim(ClaimStatus.BUSY, 0.001)
        if row.status == _DONE:
            return Claim(ClaimStatus.DONE, result=row.result)
        return Claim(ClaimStatus.BUSY, max(row.lease_until - now, 0.001))

    async def complete(
        self,
        group: str,
        event_id: str,
        *,
        owner: str,
        retention: float,
        result: bytes | None = None,
    ) -> None:
        async with self.engine.begin() as conn:
            await self.complete_in(
                conn, group, event_id, owner=owner, retention=retention, result=result
            )

    async def complete_in(
        self,
        session: Any,
        group: str,
        event_id: str,
        *,
        owner: str,
        retention: float,
        result: bytes | None = None,
    ) -> None:
        """Mark the key done in ``session``'s transaction (an ``AsyncSession`` or
        ``AsyncConnection`` on this store's database), without committing: the marker commits
        with the caller's own writes, or rolls back with them."""
        now = self._now()
        upsert = self._upsert(
            group, event_id, _DONE, owner, now, until=now + retention, result=result
        )
        await session.execute(upsert)

    async def release(self, group: str, event_id: str, *, owner: str) -> None:
        c = self.table.c
        delete = self.table.delete().where(
            c.group == group, c.event_id == event_id, c.owner == owner, c.status == _RUNNING
        )
        async with self.engine.begin() as conn:
            await conn.execute(delete)

    async def delete_expired(self) -> int:
        """Delete rows past their lease or retention; returns how many (run it now and then)."""
        delete = self.table.delete().where(self.table.c.lease_until <= self._now())
        async with self.engine.begin() as conn:
            result = await conn.execute(delete)
        return int(result.rowcount)

    async def close(self) -> None:
        """Dispose of the engine if this store created it from a URL."""
        if self._owns_engine:
            await self.engine.dispose()

    def _upsert(
        self,
        group: str,
        event_id: str,
        status: str,
        owner: str,
        now: float,
        *,
        until: float,
        only_if_expired: bool = False,
        result: bytes | None = None,
    ) -> Any:
        """Insert the row, or overwrite the existing one (only an expired one, if asked)."""
        insert = self._insert(self.table).values(
            group=group,
            event_id=event_id,
            status=status,
            lease_until=until,
            owner=owner,
            updated_at=now,
            result=result,
        )
        columns = ("status", "lease_until", "owner", "updated_at", "result")
        return insert.on_conflict_do_update(
            index_elements=["group", "event_id"],
            set_={k: insert.excluded[k] for k in columns},
            where=(self.table.c.lease_until <= now) if only_if_expired else None,
        )

    def _select(self, group: str, event_id: str) -> sa.Select[Any]:
        c = self.table.c
        return sa.select(c.status, c.lease_until, c.result).where(
            c.group == group, c.event_id == event_id
        )

    def __repr__(self) -> str:
        return f"SqlIdempotencyStore({self.engine.url.render_as_string()!r}, {self.table.name!r})"
