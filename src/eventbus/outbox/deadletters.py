"""Dead outbox rows — staged events no attempt could publish — as a dead-letter store.

They stay in the outbox table (``state = 'dead'``) and are seen through the same protocol as a
broker's dead letters (``eventbus.DeadLetterStore``): list and get them, replay one (it is
published again from a fresh attempt count, with its event id unchanged), purge them. The
group of such a record is ``"outbox"``: the event never reached a consumer group.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from eventbus.deadletters import DeadLetterRecord
from eventbus.errors import DeadLetterNotFound, DecodeError
from eventbus.outbox.schema import DEAD, PENDING
from eventbus.wirevalues import loads

__all__ = ["OUTBOX_GROUP", "OutboxDeadLetters"]

OUTBOX_GROUP = "outbox"


class OutboxDeadLetters:
    """``outbox.dead_letters(engine)``; see the module documentation."""

    def __init__(self, engine: AsyncEngine, table: sa.Table, now: Callable[[], float]) -> None:
        self.engine, self.table, self.now = engine, table, now

    async def list(self, *, group: str | None = None, limit: int = 100) -> list[DeadLetterRecord]:
        if group not in (None, OUTBOX_GROUP):
            return []
        t = self.table
        query = sa.select(t).where(t.c.state == DEAD).order_by(t.c.position).limit(limit)
        async with self.engine.connect() as connection:
            return [_record(row) for row in await connection.execute(query)]

    async def get(self, dead_letter_id: str) -> DeadLetterRecord | None:
        t = self.table
        query = sa.select(t).where(t.c.state == DEAD, t.c.id == dead_letter_id)
        async with self.engine.connect() as connection:
            row = (await connection.execute(query)).first()
        return _record(row) if row is not None else None

    async def replay(self, dead_letter_id: str) -> None:
        """Make the row pending again, due now, with a fresh attempt count."""
        t = self.table
        statement = (
            sa.update(t)
            .where(t.c.state == DEAD, t.c.id == dead_letter_id)
            .values(state=PENDING, attempts=0, next_attempt_at=self.now(), last_error=None)
        )
        async with self.engine.begin() as connection:
            if not (await connection.execute(statement)).rowcount:
                raise DeadLetterNotFound(dead_letter_id, " among the dead outbox rows")

    async def purge(self, *, group: str | None = None) -> int:
        if group not in (None, OUTBOX_GROUP):
            return 0
        async with self.engine.begin() as connection:
            result = await connection.execute(
                sa.delete(self.table).where(self.table.c.state == DEAD)
            )
        return int(result.rowcount)


def _record(row: Any) -> DeadLetterRecord:
    """A dead row as a record: the dead-letter id is the event id; its first failure time is
    not kept, so the record says when the event was staged instead."""
    return DeadLetterRecord(
        id=row.id,
        destination=row.aggregatetype,
        group=OUTBOX_GROUP,
        subscription="",
        reason=f"could not be published after {row.attempts} attempts",
        error_type="",
        error_message=row.last_error or "",
        attempts=row.attempts,
        headers=_headers(row.headers),
        body=bytes(row.payload),
        event_id=row.id,
        event_type=row.type,
        traceparent=row.traceparent,
        first_failure_at=datetime.fromtimestamp(row.created_at, timezone.utc),
    )


def _headers(stored: str) -> dict[str, Any]:
    """The staged headers, or none when the column no longer holds a JSON object (the
    record's error message says so; the row itself is kept as it is)."""
    try:
        headers, _ = loads(stored)
    except DecodeError:
        return {}
    return headers if isinstance(headers, dict) else {}
