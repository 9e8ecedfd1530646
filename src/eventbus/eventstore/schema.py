"""The events table, and how an envelope is kept in a row.

| column | meaning |
|---|---|
| ``position`` | the global feed's order: increasing in commit order (see :mod:`.sql`) |
| ``stream_id``, ``version`` | the stream and the event's place in it (1, 2, 3 …), unique together |
| ``id`` | the event id (``Envelope.id``), unique in the store: what makes a retry idempotent |
| ``type`` | the event type (also among the headers; a column of its own for readers) |
| ``headers`` | the CloudEvents attributes as binary-mode headers (JSON), as the outbox keeps them |
| ``data`` | the payload, as encoded |

The envelope is kept in the library's one binary-mode form (:func:`~eventbus.envelope.to_binary`),
so a stored event and a published one are the same bytes and the same attributes.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

from eventbus.envelope import Envelope, from_stored, to_binary

__all__ = ["envelope_of", "events_table", "row_of"]

_POSITION = sa.BigInteger().with_variant(sqlite.INTEGER(), "sqlite")  # SQLite's rowid alias


def events_table(metadata: sa.MetaData, name: str, schema: str | None = None) -> sa.Table:
    return sa.Table(
        name,
        metadata,
        sa.Column("position", _POSITION, primary_key=True, autoincrement=True),
        sa.Column("stream_id", sa.String(255), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("id", sa.String(255), nullable=False),
        sa.Column("type", sa.String(255), nullable=False),
        sa.Column("headers", sa.Text(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.UniqueConstraint("stream_id", "version", name=f"uq_{name}_stream_version"),
        sa.UniqueConstraint("id", name=f"uq_{name}_id"),
        schema=schema,
        # Positions are never given twice, even after the last row is deleted.
        sqlite_autoincrement=True,
    )


def row_of(stream_id: str, version: int, envelope: Envelope) -> dict[str, Any]:
    headers, data = to_binary(envelope)
    return {
        "stream_id": stream_id,
        "version": version,
        "id": envelope.id,
        "type": envelope.type,
        "headers": json.dumps(headers, separators=(",", ":")),
        "data": data,
    }


def envelope_of(row: Any) -> Envelope:
    """The stored envelope, unchanged (same id, time and attributes)."""
    return from_stored(row.headers, bytes(row.data))
