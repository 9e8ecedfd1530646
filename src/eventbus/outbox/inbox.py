"""``Inbox``: effects exactly once — the handler's writes commit with the record of the event.

For each delivery the middleware opens a transaction (an ``AsyncSession`` on ``engine``,
exposed as ``ctx.session``) and inserts ``(group, event id)`` into the inbox table first. The
handler writes through ``ctx.session``; ``ctx.publish(...)`` is staged in the outbox in the same
transaction. They all commit together when the handler returns, or none of them do:

* a redelivery of an event whose transaction committed finds its record and is acked
  without running the handler (``ctx.state["eventbus.inbox.duplicate"]`` is True);
* a handler that raised rolled everything back, record included, so the redelivery runs it
  again.

The insert comes first on purpose: a second delivery of the same event running at the same
time waits on the record (PostgreSQL) or the write lock (SQLite) instead of running the handler
too. On SQLite that lock is the whole database's: keep the handler short while the transaction
is open, and give the engine a busy timeout (``connect_args={"timeout": 30}``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from eventbus.context import staging_session
from eventbus.errors import ConfigurationError
from eventbus.outbox.store import Outbox

if TYPE_CHECKING:
    from eventbus.context import Context, Next

__all__ = ["DUPLICATE", "Inbox"]

log = logging.getLogger("eventbus.outbox")

DUPLICATE = "eventbus.inbox.duplicate"
"""``ctx.state`` key: True when the inbox found the event handled already."""


class Inbox:
    """Run each (consumer group, event id) once, in one transaction with its effects.

    ``engine`` is the database of the handler's own data; ``outbox`` names the tables (by
    default those of ``Outbox()``, or the bus's when you pass it). ``retention`` seconds after
    handling, a record is deleted (one sweep every ``sweep_every`` deliveries): a redelivery
    later than that runs the handler again.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        outbox: Outbox | None = None,
        retention: float = 7 * 86400,
        sweep_every: int = 1000,
        now: Callable[[], float] = time.time,
    ) -> None:
        if engine.dialect.name not in ("postgresql", "sqlite"):
            raise ConfigurationError(
                f"the inbox supports PostgreSQL and SQLite, not {engine.dialect.name}"
            )
        self.engine = engine
        self.table = (outbox or Outbox()).inbox
        self.retention, self.sweep_every, self.now = retention, sweep_every, now
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        self._handled = 0

    async def __call__(self, ctx: Context, call_next: Next) -> None:
        group = ctx.subscription.group or ctx.subscription.name
        async with self._sessions() as session, session.begin():
            if not await self._record(session, group, ctx.envelope.id):
                ctx.state[DUPLICATE] = True
                name, event_id = ctx.subscription.name, ctx.envelope.id
                log.info("%s: %s was handled already; skipped", name, event_id)
                return
            ctx.session = session
            token = staging_session.set(session)
            try:
                await call_next(ctx)
            finally:
                staging_session.reset(token)
                ctx.session = None
        await self._sweep()

    async def _record(self, session: AsyncSession, group: str, event_id: str) -> bool:
        """Insert the record; False when it is there already (a committed earlier delivery)."""
        statement = (
            self._insert(self.table)
            .values(group=group, event_id=event_id, handled_at=self.now())
            .on_conflict_do_nothing(index_elements=["group", "event_id"])
        )
        result: Any = await session.execute(statement)
        return bool(result.rowcount)

    async def _sweep(self) -> None:
        self._handled += 1
        if self._handled % self.sweep_every:
            return
        before = self.now() - self.retention
        async with self.engine.begin() as connection:
            await connection.execute(sa.delete(self.table).where(self.table.c.handled_at < before))
