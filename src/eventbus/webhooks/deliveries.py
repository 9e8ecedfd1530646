"""Deliveries: taking an event in (one row per matching endpoint), and the delivery log.

Taking an event in writes, in one transaction, one ``pending`` row per endpoint whose event
types match, due at once; the row keeps the exact body every attempt sends. An event taken in
twice finds its rows there (unique ``(endpoint_id, event_id)``) and adds none. From then on the
row *is* the retry state: a sender that dies loses nothing, the next one carries on from the
table (see :mod:`eventbus.webhooks.sender`).

The operator's view: :meth:`Deliveries.attempts` (the log of an endpoint: when, how long,
which status, what next), :meth:`Deliveries.list`, :meth:`Deliveries.replay`, and
:meth:`Deliveries.dead_letters` (the dead ones as an ``eventbus.DeadLetterStore``).
"""

from __future__ import annotations

import builtins
import dataclasses
import json
import secrets as random_source
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from eventbus.deadletters import DeadLetterRecord
from eventbus.envelope import Envelope
from eventbus.errors import DeadLetterNotFound, EventBusError, PermanentError
from eventbus.webhooks.endpoints import Endpoint
from eventbus.webhooks.schema import DEAD, DELIVERED, PENDING, Tables

__all__ = ["AttemptRecord", "Deliveries", "DeliveryNotFound", "DeliveryRecord", "body_of"]


class DeliveryNotFound(EventBusError):
    def __init__(self, delivery_id: str) -> None:
        super().__init__(f"no webhook delivery {delivery_id!r}")
        self.delivery_id = delivery_id


@dataclasses.dataclass(frozen=True)
class DeliveryRecord:
    id: str
    endpoint_id: str
    event_id: str
    event_type: str
    state: str
    attempts: int
    next_attempt_at: float | None
    """When the next attempt goes (``None`` once delivered or dead)."""
    last_status: int | None
    last_error: str | None
    created_at: float
    finished_at: float | None
    body: bytes = dataclasses.field(repr=False, default=b"")


@dataclasses.dataclass(frozen=True)
class AttemptRecord:
    """One line of the delivery log."""

    delivery_id: str
    endpoint_id: str
    event_id: str
    attempt: int
    started_at: float
    latency: float
    status_code: int | None
    error: str | None
    outcome: str
    next_attempt_at: float | None


def body_of(envelope: Envelope, now: float) -> bytes:
    """The request body: ``{"type", "timestamp", "data"}``, compact JSON."""
    try:
        data = json.loads(envelope.data) if envelope.data else None
    except ValueError:
        raise PermanentError(
            f"event {envelope.id} has a {envelope.datacontenttype} payload; webhooks carry JSON"
        ) from None
    moment = envelope.time or datetime.fromtimestamp(now, timezone.utc)
    stamp = moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    document = {"type": envelope.type, "timestamp": stamp, "data": data}
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


class Deliveries:
    """The deliveries and attempts tables: intake, the log, replays."""

    def __init__(
        self, engine: AsyncEngine, tables: Tables, now: Callable[[], float], channel: str
    ) -> None:
        self.engine, self.tables, self.now = engine, tables, now
        self.table = tables.deliveries
        self.postgres = engine.dialect.name == "postgresql"
        self._insert = postgresql.insert if self.postgres else sqlite.insert
        self._notify = sa.select(sa.func.pg_notify(channel, ""))
        """Wakes idle senders when the transaction commits (PostgreSQL)."""

    async def enqueue(
        self,
        envelope: Envelope,
        endpoints: Sequence[Endpoint],
        *,
        connection: AsyncConnection | None = None,
    ) -> int:
        """One pending row per endpoint of ``endpoints`` that accepts the event's type (in
        ``connection``'s transaction when given); returns how many rows are new."""
        chosen = [e for e in endpoints if e.accepts(envelope.type)]
        if not chosen:
            return 0
        now = self.now()
        body = body_of(envelope, now)
        rows = [
            {
                "id": "dl_" + random_source.token_hex(12),
                "endpoint_id": endpoint.id,
                "event_id": envelope.id,
                "event_type": envelope.type,
                "body": body,
                "traceparent": envelope.traceparent,
                "state": PENDING,
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
            }
            for endpoint in chosen
        ]
        # RETURNING counts the new rows: a many-row insert has no rowcount on asyncpg.
        statement = (
            self._insert(self.table)
            .on_conflict_do_nothing(index_elements=["endpoint_id", "event_id"])
            .returning(self.table.c.id)
        )
        if connection is not None:
            return await self._insert_rows(connection, statement, rows)
        async with self.engine.begin() as own:
            return await self._insert_rows(own, statement, rows)

    async def _insert_rows(
        self, connection: AsyncConnection, statement: Any, rows: list[dict[str, Any]]
    ) -> int:
        new = len((await connection.execute(statement, rows)).all())
        if new and self.postgres:
            await connection.execute(self._notify)
        return new

    async def get(self, delivery_id: str) -> DeliveryRecord:
        query = sa.select(self.table).where(self.table.c.id == delivery_id)
        async with self.engine.connect() as connection:
            row = (await connection.execute(query)).first()
        if row is None:
            raise DeliveryNotFound(delivery_id)
        return _delivery(row)

    async def list(
        self,
        *,
        endpoint_id: str | None = None,
        event_id: str | None = None,
        state: str | None = None,
        limit: int = 100,
    ) -> list[DeliveryRecord]:
        """Deliveries, newest first, narrowed to an endpoint, an event or a state."""
        t = self.table
        query = sa.select(t).order_by(t.c.position.desc()).limit(limit)
        for column, value in (("endpoint_id", endpoint_id), ("event_id", event_id)):
            if value is not None:
                query = query.where(t.c[column] == value)
        if state is not None:
            query = query.where(t.c.state == state)
        async with self.engine.connect() as connection:
            return [_delivery(row) for row in await connection.execute(query)]

    async def attempts(
        self, endpoint_id: str | None = None, *, delivery_id: str | None = None, limit: int = 100
    ) -> builtins.list[AttemptRecord]:
        """The delivery log, newest first: of an endpoint, of one delivery, or of all."""
        a = self.tables.attempts
        query = sa.select(a).order_by(a.c.position.desc()).limit(limit)
        if endpoint_id is not None:
            query = query.where(a.c.endpoint_id == endpoint_id)
        if delivery_id is not None:
            query = query.where(a.c.delivery_id == delivery_id)
        async with self.engine.connect() as connection:
            return [_attempt(row) for row in await connection.execute(query)]

    async def replay(self, delivery_id: str) -> None:
        """Send a delivery again, due now with a fresh attempt count, whatever its state (a
        dead one, or a delivered one the receiver lost). Its ``webhook-id`` is unchanged, so a
        receiver that did process it recognises the duplicate."""
        t = self.table
        statement = (
            sa.update(t)
            .where(t.c.id == delivery_id)
            .values(
                state=PENDING,
                attempts=0,
                next_attempt_at=self.now(),
                last_error=None,
                finished_at=None,
            )
        )
        async with self.engine.begin() as connection:
            if not (await connection.execute(statement)).rowcount:
                raise DeliveryNotFound(delivery_id)
            if self.postgres:
                await connection.execute(self._notify)

    async def lag(self) -> dict[str, float]:
        """Per endpoint: seconds since its oldest pending delivery was taken in (0: none)."""
        t, e = self.table, self.tables.endpoints
        oldest = (
            sa.select(t.c.endpoint_id, sa.func.min(t.c.created_at).label("oldest"))
            .where(t.c.state == PENDING)
            .group_by(t.c.endpoint_id)
            .subquery()
        )
        query = sa.select(e.c.id, oldest.c.oldest).outerjoin(oldest, oldest.c.endpoint_id == e.c.id)
        now = self.now()
        async with self.engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return {
            endpoint: 0.0 if first is None else max(0.0, now - float(first))
            for endpoint, first in rows
        }

    async def prune(self, before: float, limit: int = 1000) -> int:
        """Delete up to ``limit`` delivered rows finished before ``before``, and the log lines
        of attempts started before it; dead rows stay (they are dead letters until purged)."""
        t, a = self.table, self.tables.attempts
        old = (
            sa.select(t.c.position)
            .where(t.c.state == DELIVERED, t.c.finished_at < before)
            .limit(limit)
            .scalar_subquery()
        )
        lines = sa.select(a.c.position).where(a.c.started_at < before).limit(limit)
        async with self.engine.begin() as connection:
            pruned = (await connection.execute(sa.delete(t).where(t.c.position.in_(old)))).rowcount
            await connection.execute(sa.delete(a).where(a.c.position.in_(lines.scalar_subquery())))
        return int(pruned)

    def dead_letters(self) -> WebhookDeadLetters:
        return WebhookDeadLetters(self)


class WebhookDeadLetters:
    """Dead deliveries as a dead-letter store: the group is the endpoint id, the dead-letter id
    the delivery id. A replay sends the delivery again from a fresh attempt count."""

    def __init__(self, deliveries: Deliveries) -> None:
        self.deliveries = deliveries

    async def list(self, *, group: str | None = None, limit: int = 100) -> list[DeadLetterRecord]:
        found = await self.deliveries.list(endpoint_id=group, state=DEAD, limit=limit)
        return [_dead_letter(d) for d in reversed(found)]

    async def get(self, dead_letter_id: str) -> DeadLetterRecord | None:
        try:
            found = await self.deliveries.get(dead_letter_id)
        except DeliveryNotFound:
            return None
        return _dead_letter(found) if found.state == DEAD else None

    async def replay(self, dead_letter_id: str) -> None:
        if await self.get(dead_letter_id) is None:
            raise DeadLetterNotFound(dead_letter_id, " among the dead webhook deliveries")
        await self.deliveries.replay(dead_letter_id)

    async def purge(self, *, group: str | None = None) -> int:
        t = self.deliveries.table
        statement = sa.delete(t).where(t.c.state == DEAD)
        if group is not None:
            statement = statement.where(t.c.endpoint_id == group)
        async with self.deliveries.engine.begin() as connection:
            return int((await connection.execute(statement)).rowcount)


def _dead_letter(d: DeliveryRecord) -> DeadLetterRecord:
    when = datetime.fromtimestamp(d.finished_at or d.created_at, timezone.utc)
    return DeadLetterRecord(
        id=d.id,
        destination=d.endpoint_id,
        group=d.endpoint_id,
        subscription="webhooks",
        reason=f"not delivered after {d.attempts} attempts",
        error_type=f"HTTP {d.last_status}" if d.last_status else "",
        error_message=d.last_error or "",
        attempts=d.attempts,
        headers={"content-type": "application/json"},
        body=d.body,
        event_id=d.event_id,
        event_type=d.event_type,
        first_failure_at=datetime.fromtimestamp(d.created_at, timezone.utc),
        last_failure_at=when,
    )


def _delivery(row: Any) -> DeliveryRecord:
    waiting = row.state == PENDING
    return DeliveryRecord(
        id=row.id,
        endpoint_id=row.endpoint_id,
        event_id=row.event_id,
        event_type=row.event_type,
        state=row.state,
        attempts=row.attempts,
        next_attempt_at=float(row.next_attempt_at) if waiting else None,
        last_status=row.last_status,
        last_error=row.last_error,
        created_at=float(row.created_at),
        finished_at=row.finished_at,
        body=bytes(row.body),
    )


def _attempt(row: Any) -> AttemptRecord:
    return AttemptRecord(
        delivery_id=row.delivery_id,
        endpoint_id=row.endpoint_id,
        event_id=row.event_id,
        attempt=row.attempt,
        started_at=float(row.started_at),
        latency=float(row.latency),
        status_code=row.status_code,
        error=row.error,
        outcome=row.outcome,
        next_attempt_at=row.next_attempt_at,
    )
