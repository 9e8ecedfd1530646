"""Dead letters: the record, the store every adapter with a DLQ exposes, and the one codec.

A dead letter keeps the message exactly as it arrived (headers and bytes) together with its
provenance: where it was going, which group and handler failed, why, how often, and when. A
replay puts the original message back on the subscription it failed in, with its event id
unchanged, so an idempotent consumer still recognises it.

Every adapter stores the provenance the same way: :func:`provenance` turns a record into
``eventbus-dlq-<field>`` text values (headers on Kafka and RabbitMQ, stream fields on Redis)
and :func:`from_provenance` reads them back, so every field survives the round trip on every
broker. The record is cut once, when it is made (:data:`MAX_ERROR_MESSAGE`,
:data:`MAX_TRACEBACK`), never by an adapter.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

__all__ = [
    "DLQ_PREFIX",
    "FIRST_FAILURE_AT",
    "MAX_ERROR_MESSAGE",
    "MAX_TRACEBACK",
    "DeadLetterRecord",
    "DeadLetterStore",
    "from_provenance",
    "provenance",
]

DLQ_PREFIX = "eventbus-dlq-"
"""Prefix of the provenance values stored with a dead letter."""
MAX_ERROR_MESSAGE = 4000
"""A record keeps at most this many characters of the error message (the first ones)."""
MAX_TRACEBACK = 8000
"""A record keeps at most this many characters of the traceback (the last ones)."""
FIRST_FAILURE_AT = "first-failure-at"
"""``Delivery.metadata`` key: when the message first failed (ISO-8601, UTC), carried across
redeliveries so that a dead letter can say how long it had been failing."""


@dataclasses.dataclass(frozen=True)
class DeadLetterRecord:
    """A message that will not be retried, with the original bytes and why it failed."""

    id: str
    destination: str
    group: str
    subscription: str
    reason: str
    error_type: str
    error_message: str
    attempts: int
    headers: Mapping[str, Any]
    body: bytes
    event_id: str | None = None
    event_type: str | None = None
    traceparent: str | None = None
    traceback: str = ""
    first_failure_at: datetime | None = None
    last_failure_at: datetime | None = None


_TEXT_FIELDS = (
    "id",
    "destination",
    "group",
    "subscription",
    "reason",
    "error_type",
    "error_message",
    "event_id",
    "event_type",
    "traceparent",
    "traceback",
)
_TIME_FIELDS = ("first_failure_at", "last_failure_at")


def _key(field: str) -> str:
    return DLQ_PREFIX + field.replace("_", "-")


def provenance(record: DeadLetterRecord) -> dict[str, str]:
    """Every field of ``record`` but ``headers`` and ``body``, as ``eventbus-dlq-*`` text.

    Fields that are ``None`` (or empty text) are left out.
    """
    values = {_key(f): getattr(record, f) for f in _TEXT_FIELDS if getattr(record, f)}
    values[_key("attempts")] = str(record.attempts)
    for field in _TIME_FIELDS:
        moment: datetime | None = getattr(record, field)
        if moment is not None:
            values[_key(field)] = moment.isoformat()
    return values


def from_provenance(
    values: Mapping[str, Any], headers: Mapping[str, Any], body: bytes
) -> DeadLetterRecord:
    """The record that :func:`provenance` wrote into ``values`` (text or UTF-8 bytes).

    ``headers`` are the message's own, without the ``eventbus-dlq-*`` values.
    """

    def text(field: str) -> str | None:
        value = values.get(_key(field))
        if isinstance(value, (bytes, bytearray)):
            return bytes(value).decode("utf-8", "replace")
        return None if value is None else str(value)

    def when(field: str) -> datetime | None:
        value = text(field)
        try:
            return datetime.fromisoformat(value) if value else None
        except ValueError:
            return None

    attempts = text("attempts") or "1"
    return DeadLetterRecord(
        id=text("id") or "",
        destination=text("destination") or "",
        group=text("group") or "",
        subscription=text("subscription") or "",
        reason=text("reason") or "",
        error_type=text("error_type") or "",
        error_message=text("error_message") or "",
        attempts=int(attempts) if attempts.isascii() and attempts.isdigit() else 1,
        headers={k: v for k, v in headers.items() if not str(k).startswith(DLQ_PREFIX)},
        body=body,
        event_id=text("event_id"),
        event_type=text("event_type"),
        traceparent=text("traceparent"),
        traceback=text("traceback") or "",
        first_failure_at=when("first_failure_at"),
        last_failure_at=when("last_failure_at"),
    )


class DeadLetterStore(Protocol):
    """List, inspect, replay and purge dead letters (``bus.dead_letters``)."""

    async def list(
        self, *, group: str | None = None, limit: int = 100
    ) -> Sequence[DeadLetterRecord]:
        """Oldest first; ``group`` narrows to one consumer group."""

    async def get(self, dead_letter_id: str) -> DeadLetterRecord | None: ...

    async def replay(self, dead_letter_id: str) -> None:
        """Redeliver the original message to the group it failed in and remove it from the DLQ.

        Raises :class:`~eventbus.errors.DeadLetterNotFound` for an unknown id.
        """

    async def purge(self, *, group: str | None = None) -> int:
        """Delete dead letters (all, or one group's); returns how many."""
