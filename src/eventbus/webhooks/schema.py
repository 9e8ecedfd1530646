"""The webhook tables: endpoints, one row per delivery, and the log of every attempt.

``eventbus_webhook_endpoints`` — one row per receiving URL of a tenant:

| column | meaning |
|---|---|
| ``id`` | the endpoint's id (``ep_…``) |
| ``tenant`` | whose endpoint it is (a customer, an account) |
| ``url`` | where events are POSTed |
| ``event_types`` | JSON list of type names or patterns (``order.*``, ``#`` for all) |
| ``secrets`` | JSON list of ``{"secret": "whsec_…", "expires_at": seconds or null}``: every key
  still valid signs each request (several during a rotation) |
| ``enabled``, ``disabled_reason`` | disabled endpoints receive nothing; their deliveries wait |
| ``created_at``, ``updated_at`` | seconds since the epoch |

``eventbus_webhook_deliveries`` — one row per (event, endpoint), written when the event is
taken in and kept until it is delivered or dead (the durable retry state, like an outbox row):
``position``, ``id`` (``dl_…``), ``endpoint_id``, ``event_id`` (the ``webhook-id``, stable
across retries), ``event_type``, ``body`` (the exact bytes POSTed), ``traceparent``,
``state`` (``pending``, ``delivered``, ``dead``), ``attempts``, ``next_attempt_at``,
``last_error``, ``last_status``, ``lease_token``/``lease_expires_at``, ``created_at``,
``finished_at``. ``(endpoint_id, event_id)`` is unique: an event taken in twice (a redelivery
to the sender's subscription) makes no second delivery.

``eventbus_webhook_attempts`` — the delivery log: one row per attempt (``delivery_id``,
``endpoint_id``, ``attempt``, ``started_at``, ``latency``, ``status_code``, ``error``,
``outcome``, ``next_attempt_at``).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

__all__ = [
    "DEAD",
    "DELIVERED",
    "PENDING",
    "Tables",
]

PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"

_POSITION = sa.BigInteger().with_variant(sqlite.INTEGER(), "sqlite")  # SQLite's rowid alias


class Tables:
    """The three tables on ``metadata``, named ``{prefix}_endpoints``, ``…_deliveries`` and
    ``…_attempts``."""

    def __init__(self, metadata: sa.MetaData, prefix: str, schema: str | None = None) -> None:
        self.metadata = metadata
        self.endpoints = sa.Table(
            f"{prefix}_endpoints",
            metadata,
            sa.Column("id", sa.String(64), primary_key=True),
            sa.Column("tenant", sa.String(255), nullable=False),
            sa.Column("url", sa.Text(), nullable=False),
            sa.Column("event_types", sa.Text(), nullable=False),
            sa.Column("secrets", sa.Text(), nullable=False),
            sa.Column("enabled", sa.Boolean(), nullable=False, default=True),
            sa.Column("disabled_reason", sa.Text(), nullable=True),
            sa.Column("description", sa.Text(), nullable=False, default=""),
            sa.Column("created_at", sa.Double(), nullable=False),
            sa.Column("updated_at", sa.Double(), nullable=False),
            sa.Index(f"ix_{prefix}_endpoints_tenant", "tenant"),
            schema=schema,
        )
        self.deliveries = sa.Table(
            f"{prefix}_deliveries",
            metadata,
            sa.Column("position", _POSITION, primary_key=True, autoincrement=True),
            sa.Column("id", sa.String(64), nullable=False, unique=True),
            sa.Column("endpoint_id", sa.String(64), nullable=False),
            sa.Column("event_id", sa.String(255), nullable=False),
            sa.Column("event_type", sa.String(255), nullable=False),
            sa.Column("body", sa.LargeBinary(), nullable=False),
            sa.Column("traceparent", sa.String(64), nullable=True),
            sa.Column("state", sa.String(16), nullable=False, default=PENDING),
            sa.Column("attempts", sa.Integer(), nullable=False, default=0),
            sa.Column("next_attempt_at", sa.Double(), nullable=False),
            sa.Column("last_error", sa.Text(), nullable=True),
            sa.Column("last_status", sa.Integer(), nullable=True),
            sa.Column("lease_token", sa.String(36), nullable=True),
            sa.Column("lease_expires_at", sa.Double(), nullable=True),
            sa.Column("created_at", sa.Double(), nullable=False),
            sa.Column("finished_at", sa.Double(), nullable=True),
            sa.UniqueConstraint("endpoint_id", "event_id", name=f"uq_{prefix}_endpoint_event"),
            sa.Index(f"ix_{prefix}_deliveries_due", "state", "endpoint_id", "next_attempt_at"),
            schema=schema,
        )
        self.attempts = sa.Table(
            f"{prefix}_attempts",
            metadata,
            sa.Column("position", _POSITION, primary_key=True, autoincrement=True),
            sa.Column("delivery_id", sa.String(64), nullable=False),
            sa.Column("endpoint_id", sa.String(64), nullable=False),
            sa.Column("event_id", sa.String(255), nullable=False),
            sa.Column("attempt", sa.Integer(), nullable=False),
            sa.Column("started_at", sa.Double(), nullable=False),
            sa.Column("latency", sa.Double(), nullable=False),
            sa.Column("status_code", sa.Integer(), nullable=True),
            sa.Column("error", sa.Text(), nullable=True),
            sa.Column("outcome", sa.String(16), nullable=False),
            sa.Column("next_attempt_at", sa.Double(), nullable=True),
            sa.Index(f"ix_{prefix}_attempts_endpoint", "endpoint_id", "position"),
            sa.Index(f"ix_{prefix}_attempts_delivery", "delivery_id"),
            schema=schema,
        )

    @property
    def all(self) -> list[sa.Table]:
        return [self.endpoints, self.deliveries, self.attempts]
