"""The outbox and inbox tables, and how an envelope is kept in a row.

``eventbus_outbox`` holds Debezium's outbox columns (``id``, ``aggregatetype``,
``aggregateid``, ``type``, ``payload``), so a change-data-capture connector can read it
without a migration, and the relay's own: the CloudEvents headers, the trace context, the
attempts, when to try next, the lease, and the state. ``eventbus_inbox`` records which event
each consumer group has handled, in the handler's transaction.

| column | meaning |
|---|---|
| ``position`` | insert order; on both databases also the commit order of the rows of one key |
| ``id`` | the event id (``Envelope.id``), unique |
| ``aggregatetype`` | the destination the event is published to |
| ``aggregateid`` | the partition key (``Envelope.partitionkey``), or NULL |
| ``type`` | the event type |
| ``payload`` | the encoded payload, as published |
| ``headers`` | the CloudEvents attributes as binary-mode headers (JSON) |
| ``traceparent`` | the W3C trace context the event was staged in |
| ``state`` | ``pending``, ``published`` (kept for a retention only) or ``dead`` |
| ``attempts``, ``next_attempt_at``, ``last_error`` | publishing tries and their backoff |
| ``lease_token``, ``lease_expires_at`` | which relay holds the row, until when |
| ``created_at``, ``published_at`` | seconds since the epoch |
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

from eventbus.envelope import Envelope, from_stored, to_binary

__all__ = [
    "DEAD",
    "FILLFACTOR",
    "PENDING",
    "PUBLISHED",
    "envelope_of",
    "inbox_table",
    "outbox_table",
    "row_of",
]

PENDING, PUBLISHED, DEAD = "pending", "published", "dead"

_POSITION = sa.BigInteger().with_variant(sqlite.INTEGER(), "sqlite")  # SQLite's rowid alias


FILLFACTOR = 45
"""On PostgreSQL, how full (in percent) inserts leave the outbox table's pages. A claim writes
every claimed row again (its lease); with room left on the row's page PostgreSQL writes the new
version there without touching the indexes (a HOT update: no lease column is indexed), which
halves a claim's time on a backlog. The price is a backlog's rows taking about twice the pages.
Below 50 so that a page of small rows, each written again in one claim, still has room for all
of them."""


def outbox_table(metadata: sa.MetaData, name: str, schema: str | None = None) -> sa.Table:
    table = _outbox_columns(metadata, name, schema)
    statement = f"ALTER TABLE %(fullname)s SET (fillfactor = {FILLFACTOR})"
    fillfactor = sa.DDL(statement)  # type: ignore[no-untyped-call]
    sa.event.listen(table, "after_create", fillfactor.execute_if(dialect="postgresql"))
    return table


def _outbox_columns(metadata: sa.MetaData, name: str, schema: str | None) -> sa.Table:
    return sa.Table(
        name,
        metadata,
        sa.Column("position", _POSITION, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(255), nullable=False, unique=True),
        sa.Column("aggregatetype", sa.String(255), nullable=False),
        sa.Column("aggregateid", sa.String(255), nullable=True),
        sa.Column("type", sa.String(255), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("headers", sa.Text(), nullable=False),
        sa.Column("traceparent", sa.String(64), nullable=True),
        sa.Column("state", sa.String(16), nullable=False, default=PENDING),
        sa.Column("attempts", sa.Integer(), nullable=False, default=0),
        sa.Column("next_attempt_at", sa.Double(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("lease_token", sa.String(36), nullable=True),
        sa.Column("lease_expires_at", sa.Double(), nullable=True),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("published_at", sa.Double(), nullable=True),
        sa.Index(f"ix_{name}_state_position", "state", "position"),
        sa.Index(f"ix_{name}_key_position", "aggregateid", "position"),
        schema=schema,
    )


def inbox_table(metadata: sa.MetaData, name: str, schema: str | None = None) -> sa.Table:
    return sa.Table(
        name,
        metadata,
        sa.Column("group", sa.String(255), primary_key=True),
        sa.Column("event_id", sa.String(255), primary_key=True),
        sa.Column("handled_at", sa.Double(), nullable=False),
        sa.Index(f"ix_{name}_handled_at", "handled_at"),
        schema=schema,
    )


def row_of(destination: str, envelope: Envelope, now: float) -> dict[str, Any]:
    """The outbox row that keeps ``envelope`` exactly as it will be published."""
    headers, payload = to_binary(envelope)
    return {
        "id": envelope.id,
        "aggregatetype": destination,
        "aggregateid": envelope.partitionkey,
        "type": envelope.type,
        "payload": payload,
        "headers": json.dumps(headers, separators=(",", ":")),
        "traceparent": envelope.traceparent,
        "state": PENDING,
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
    }


def envelope_of(row: Any) -> Envelope:
    """The staged envelope of an outbox row, unchanged (same id, time and attributes)."""
    return from_stored(row.headers, bytes(row.payload))
