"""Dead letters of the RabbitMQ adapter: the ``{queue}.dlq`` queues, browsed without loss.

A dead letter is the original message (body, headers, properties) plus ``eventbus-dlq-*``
provenance headers, written by :meth:`RabbitMQDelivery.dead_letter`; or a message RabbitMQ
dead-lettered itself (a reject, a quorum delivery limit), whose provenance is read from its
``x-death`` header. Split from :mod:`eventbus.brokers.rabbitmq` to keep each module readable.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from aio_pika.abc import AbstractIncomingMessage

from eventbus.brokers.rabbitmq import (
    ATTEMPT,
    DESTINATION,
    DLQ,
    _copy,
    _driver_errors,
    _received_headers,
    _text,
    _without_ours,
)
from eventbus.deadletters import DeadLetterRecord
from eventbus.envelope import Envelope, decode
from eventbus.errors import DeadLetterNotFound, DecodeError

if TYPE_CHECKING:
    from eventbus.brokers.rabbitmq import RabbitMQBroker

__all__ = ["RabbitMQDeadLetters"]

_BROWSE_LIMIT = 100_000


class RabbitMQDeadLetters:
    """Dead letters in the ``{queue}.dlq`` queues of this adapter's subscriptions.

    Listing browses without losing anything: messages are fetched with ``basic.get`` (not
    acked) on a channel of its own, which is then closed so RabbitMQ puts them all back in
    place. Browses in this process are serialised; another process browsing the same DLQ at
    that moment sees fewer messages. Messages RabbitMQ dead-lettered itself (a reject, a
    quorum delivery limit) are listed too, their provenance taken from ``x-death``.
    """

    def __init__(self, broker: RabbitMQBroker) -> None:
        self._broker = broker
        self._queues: dict[str, str] = {}  # dlq name -> group
        self._lock = asyncio.Lock()

    def register(self, dlq: str, group: str) -> None:
        """Include ``dlq`` (a ``{queue}.dlq`` of ``group``) in listings; subscribe does this."""
        self._queues[dlq] = group

    def _selected(self, group: str | None) -> list[str]:
        return [q for q, g in self._queues.items() if group is None or g == group]

    @contextlib.asynccontextmanager
    async def _browse(self, dlq: str) -> AsyncIterator[list[AbstractIncomingMessage]]:
        async with self._lock, _driver_errors(f"reading dead letters from {dlq!r}"):
            channel = await self._broker.connection.channel(publisher_confirms=False)
            try:
                queue = await channel.get_queue(dlq, ensure=False)
                messages: list[AbstractIncomingMessage] = []
                while len(messages) < _BROWSE_LIMIT:
                    message = await queue.get(no_ack=False, fail=False)
                    if message is None:
                        break
                    messages.append(message)
                yield messages
            finally:
                with contextlib.suppress(Exception):
                    await channel.close()  # hands back every message not acked

    async def list(self, *, group: str | None = None, limit: int = 100) -> list[DeadLetterRecord]:
        records: list[DeadLetterRecord] = []
        for dlq in self._selected(group):
            async with self._browse(dlq) as messages:
                records.extend(self._record(dlq, m) for m in messages)
            if len(records) >= limit:
                break
        return records[:limit]

    async def get(self, dead_letter_id: str) -> DeadLetterRecord | None:
        for dlq in self._selected(None):
            async with self._browse(dlq) as messages:
                for message in messages:
                    record = self._record(dlq, message)
                    if record.id == dead_letter_id:
                        return record
        return None

    async def replay(self, dead_letter_id: str) -> None:
        """Send the original message to its group's queue (attempt 1, no metadata), then
        remove it from the DLQ."""
        for dlq in self._selected(None):
            async with self._browse(dlq) as messages:
                for message in messages:
                    record = self._record(dlq, message)
                    if record.id != dead_letter_id:
                        continue
                    headers = _without_ours(_received_headers(message))
                    headers[DESTINATION] = record.destination
                    work_queue = dlq.removesuffix(".dlq")
                    await self._broker.send("", work_queue, _copy(message, headers))
                    await message.ack()
                    return
        raise DeadLetterNotFound(dead_letter_id)

    async def purge(self, *, group: str | None = None) -> int:
        count = 0
        for dlq in self._selected(group):
            async with self._lock, _driver_errors(f"purging {dlq!r}"):
                channel = await self._broker.connection.channel(publisher_confirms=False)
                try:
                    queue = await channel.get_queue(dlq, ensure=False)
                    result = await queue.purge()
                    count += int(result.message_count or 0)
                finally:
                    await channel.close()
        return count

    def _record(self, dlq: str, message: AbstractIncomingMessage) -> DeadLetterRecord:
        headers = _received_headers(message)
        ours = {k[len(DLQ) :]: _text(v) for k, v in headers.items() if k.startswith(DLQ)}
        original = {k: v for k, v in headers.items() if not k.startswith(DLQ)}
        if "id" in ours:
            return _record_from(dlq, ours, original, message.body, self._queues[dlq])
        return _native_record(dlq, original, message, self._queues[dlq])


def _event_of(headers: Mapping[str, Any], body: bytes) -> Envelope | None:
    try:
        return decode(headers, body)
    except DecodeError:
        return None


def _time(value: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if value else None
    except ValueError:
        return None


def _record_from(
    dlq: str, ours: Mapping[str, str], headers: dict[str, Any], body: bytes, group: str
) -> DeadLetterRecord:
    envelope = _event_of(headers, body)
    return DeadLetterRecord(
        id=ours["id"],
        destination=ours.get("destination", ""),
        group=ours.get("group", group),
        subscription=ours.get("subscription", ""),
        reason=ours.get("reason", ""),
        error_type=ours.get("error-type", ""),
        error_message=ours.get("error-message", ""),
        attempts=int(ours.get("attempts", "1")),
        headers=headers,
        body=body,
        event_id=envelope.id if envelope else None,
        event_type=envelope.type if envelope else None,
        traceparent=envelope.traceparent if envelope else None,
        traceback=ours.get("traceback", ""),
        first_failure_at=_time(ours.get("first-failure-at")),
        last_failure_at=_time(ours.get("last-failure-at")),
    )


def _native_record(
    dlq: str, headers: dict[str, Any], message: AbstractIncomingMessage, group: str
) -> DeadLetterRecord:
    """A message RabbitMQ dead-lettered itself: provenance from its first ``x-death`` entry."""
    deaths = headers.get("x-death") or [{}]
    death = deaths[0] if isinstance(deaths, list) and deaths else {}
    reason = _text(death.get("reason", "rejected"))
    keys = death.get("routing-keys") or [message.routing_key or ""]
    stamp = f"{dlq}|{message.message_id}|{death.get('time')}|{death.get('count')}"
    digest = hashlib.sha1(stamp.encode() + hashlib.sha1(message.body).digest()).hexdigest()
    at = death.get("time")
    when = at.replace(tzinfo=at.tzinfo or timezone.utc) if isinstance(at, datetime) else None
    envelope = _event_of(headers, message.body)
    attempt = headers.get(ATTEMPT)
    return DeadLetterRecord(
        id=f"x-death-{digest[:32]}",
        destination=_text(headers.get(DESTINATION) or keys[0]),
        group=group,
        subscription="",
        reason=f"{reason} by RabbitMQ (x-death)",
        error_type="",
        error_message=f"RabbitMQ dead-lettered the message from {_text(death.get('queue', '?'))}"
        f" ({reason}, {death.get('count', 1)} time(s))",
        attempts=int(_text(attempt)) if attempt is not None else 1,
        headers=headers,
        body=message.body,
        event_id=envelope.id if envelope else None,
        event_type=envelope.type if envelope else None,
        traceparent=envelope.traceparent if envelope else None,
        first_failure_at=when,
        last_failure_at=when,
    )
