"""``Outbox``: the tables, staging in the caller's transaction, and what is waiting.

``bus.publish(..., session=s)`` ends here (``EventBus(..., outbox=Outbox())``): the envelope
the bus built — the publish middleware has run, so trace context and headers are in it — is
inserted in ``s``'s transaction, and nothing else happens. A rollback takes it away; a commit
makes it visible to :class:`~eventbus.outbox.OutboxRelay`, which publishes it unchanged.

**Commit order per key.** On PostgreSQL, staging takes a transaction-scoped advisory lock on
each partition key it stages (``pg_advisory_xact_lock``) before inserting: a second
transaction staging the same key waits until the first has committed or rolled back, so the
rows of one key get their ``position`` in commit order, and the relay publishes them in that
order. Transactions staging different keys do not wait for each other. SQLite has one writer
at a time, which gives the same order for free. Staging also sends ``NOTIFY`` on PostgreSQL,
delivered at commit, so an idle relay wakes at once.
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from eventbus.envelope import Envelope
from eventbus.errors import ConfigurationError
from eventbus.outbox.deadletters import OutboxDeadLetters
from eventbus.outbox.schema import DEAD, PENDING, inbox_table, outbox_table, row_of

__all__ = ["Backlog", "Outbox"]


@dataclasses.dataclass(frozen=True)
class Backlog:
    """What the outbox holds that is not published: for metrics and the command line."""

    pending: int
    """Rows committed and not yet published (retrying ones included)."""
    dead: int
    """Rows that failed their last attempt (see ``Outbox.dead_letters``)."""
    oldest_age: float | None
    """Seconds since the oldest pending row was staged (None when there is none)."""
    held_keys: int = 0
    """Keys whose later pending rows wait behind a dead or retrying row of the key: in
    ordered mode those rows go only once it is published (or purged)."""


class Outbox:
    """The outbox and inbox tables on ``metadata`` (a new ``MetaData`` unless given).

    ``table`` and ``inbox`` name the tables; add ``outbox.metadata`` to your Alembic
    ``target_metadata`` to migrate them, or call :meth:`create_tables`. ``now`` returns
    wall-clock seconds since the epoch (injectable for tests).
    """

    def __init__(
        self,
        *,
        metadata: sa.MetaData | None = None,
        table: str = "eventbus_outbox",
        inbox: str = "eventbus_inbox",
        schema: str | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.metadata = metadata if metadata is not None else sa.MetaData()
        self.table = outbox_table(self.metadata, table, schema)
        self.inbox = inbox_table(self.metadata, inbox, schema)
        self.channel = f"{table}_staged"
        """The PostgreSQL ``NOTIFY`` channel a commit of staged rows signals on."""
        self.now = now
        self._lock_class = zlib.crc32(table.encode()) & 0x7FFFFFFF

    async def create_tables(self, engine: AsyncEngine) -> None:
        """Create both tables (and their indexes) if they do not exist."""
        async with engine.begin() as connection:
            await connection.run_sync(self.metadata.create_all, tables=[self.table, self.inbox])

    # ---------------------------------------------------------------- staging
    async def stage(self, session: Any, messages: Sequence[tuple[str, Envelope]]) -> None:
        """Insert ``(destination, envelope)`` rows in ``session``'s transaction (an
        ``AsyncSession`` or ``AsyncConnection``); never commits, flushes nothing else."""
        if not isinstance(session, (AsyncSession, AsyncConnection)):
            raise ConfigurationError(
                f"session= takes the SQLAlchemy AsyncSession (or AsyncConnection) whose "
                f"transaction the events commit with, not {type(session).__name__}"
            )
        if not messages:
            return
        now = self.now()
        rows = [row_of(destination, envelope, now) for destination, envelope in messages]
        connection = session if isinstance(session, AsyncConnection) else None
        dialect = (connection or await session.connection()).dialect.name
        if dialect == "postgresql":
            await session.execute(self._lock_and_notify({r["aggregateid"] for r in rows}))
        await session.execute(sa.insert(self.table), rows)

    def _lock_and_notify(self, keys: set[str | None]) -> sa.Select[Any]:
        """One statement: wake the relays at commit, lock the keys (in one order: no deadlock
        between two transactions staging the same keys)."""
        locks = [
            sa.func.pg_advisory_xact_lock(self._lock_class, sa.func.hashtext(key))
            for key in sorted(k for k in keys if k is not None)
        ]
        return sa.select(sa.func.pg_notify(self.channel, ""), *locks)

    # ---------------------------------------------------------------- looking
    async def backlog(self, engine: AsyncEngine) -> Backlog:
        """How many rows wait (pending, dead) and how old the oldest pending one is."""
        t = self.table
        query = sa.select(
            sa.func.count().filter(t.c.state == PENDING),
            sa.func.count().filter(t.c.state == DEAD),
            sa.func.min(t.c.created_at).filter(t.c.state == PENDING),
        )
        async with engine.connect() as connection:
            pending, dead, oldest = (await connection.execute(query)).one()
            held = (await connection.execute(self._held_keys())).scalar_one()
        age = None if oldest is None else max(0.0, self.now() - oldest)
        return Backlog(pending=int(pending), dead=int(dead), oldest_age=age, held_keys=int(held))

    def _held_keys(self) -> sa.Select[Any]:
        t, later = self.table, self.table.alias("later")
        failing = sa.or_(t.c.state == DEAD, sa.and_(t.c.state == PENDING, t.c.attempts > 0))
        waiting = sa.exists().where(
            later.c.aggregateid == t.c.aggregateid,
            later.c.position > t.c.position,
            later.c.state == PENDING,
        )
        return sa.select(sa.func.count(sa.distinct(t.c.aggregateid))).where(
            t.c.aggregateid.is_not(None), failing, waiting
        )

    def dead_letters(self, engine: AsyncEngine) -> OutboxDeadLetters:
        """The rows no attempt could publish, as a dead-letter store (list, replay, purge)."""
        return OutboxDeadLetters(engine, self.table, self.now)
