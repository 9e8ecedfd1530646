"""Dead letters of the RabbitMQ adapter: the ``{queue}.dlq`` queues, browsed without loss.

A dead letter is the message as it arrived (body, headers, properties) with the record's
provenance as ``eventbus-dlq-*`` headers, written by ``RabbitMQDelivery.dead_letter`` with
:func:`eventbus.deadletters.provenance` and read back here with
:func:`~eventbus.deadletters.from_provenance`. A message RabbitMQ dead-lettered itself (a
quorum queue's delivery limit, a reject by another client) has no provenance: it is listed
with what its ``x-death`` header says.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Mapping
from datetime import datetime, timezone
from typing import Any, Protocol

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

from eventbus.brokers._wire import DESTINATION, read_carried, text, whole_number, without_carried
from eventbus.brokers.rabbitmq.messages import copy_of, received_headers
from eventbus.brokers.rabbitmq.topology import (
    dead_letter_queue,
    errors,
    queue_name,
    quietly,
    work_queue,
)
from eventbus.deadletters import DLQ_PREFIX, DeadLetterRecord, from_provenance
from eventbus.envelope import decode
from eventbus.errors import DeadLetterNotFound, DecodeError
from eventbus.types import SubscriptionView

__all__ = ["DeadLetterLink", "RabbitMQDeadLetters"]

_BROWSE_LIMIT = 100_000
_PROVENANCE_ID = DLQ_PREFIX + "id"


class DeadLetterLink(Protocol):
    """What the store needs of its broker: the live connection and a confirmed publish."""

    @property
    def connection(self) -> AbstractRobustConnection:
        """The connection (raises :class:`~eventbus.errors.BusNotStarted` before connect)."""

    async def send(
        self, exchange: str, routing_key: str, message: aio_pika.Message, *, mandatory: bool = True
    ) -> None:
        """Publish ``message`` and wait for its confirm."""


class RabbitMQDeadLetters:
    """Dead letters in the ``{queue}.dlq`` queues of this adapter's subscriptions.

    Listing browses without losing anything: messages are fetched with ``basic.get`` (not
    acked) on a channel of its own, which is then closed so RabbitMQ puts them all back in
    place. Browses in this process are serialised; another process browsing the same DLQ at
    that moment sees fewer messages.
    """

    def __init__(self, link: DeadLetterLink) -> None:
        self._link = link
        self._queues: dict[str, str] = {}  # dlq name -> group
        self._lock = asyncio.Lock()

    def register(self, dlq: str, group: str) -> None:
        """Include ``dlq`` (a ``{queue}.dlq`` of ``group``) in listings; subscribe does this."""
        self._queues[dlq] = group

    def include(self, subscription: SubscriptionView) -> None:
        """Include the DLQ of ``subscription`` without subscribing: for a process that only
        operates on dead letters (the ``eventbus dlq`` command), given the app's
        subscriptions."""
        if subscription.group:
            queue = queue_name(subscription.group, subscription.topic)
            self.register(dead_letter_queue(queue), subscription.group)

    def _selected(self, group: str | None) -> list[str]:
        return [q for q, g in self._queues.items() if group is None or g == group]

    @contextlib.asynccontextmanager
    async def _channel(self, what: str) -> AsyncIterator[AbstractChannel]:
        """A channel of its own for ``what``, closed afterwards: closing hands back every
        message fetched on it and not acked."""
        async with self._lock:
            with errors(what):
                channel = await self._link.connection.channel(publisher_confirms=False)
            try:
                yield channel
            finally:
                await quietly(f"closing the channel after {what}", channel.close())

    @contextlib.asynccontextmanager
    async def _browse(self, dlq: str) -> AsyncIterator[list[AbstractIncomingMessage]]:
        """Every message of ``dlq`` (up to the browse limit), fetched and not acked."""
        what = f"reading dead letters from {dlq!r}"
        async with self._channel(what) as channel:
            messages: list[AbstractIncomingMessage] = []
            with errors(what):
                queue = await channel.get_queue(dlq, ensure=False)
                while len(messages) < _BROWSE_LIMIT:
                    message = await queue.get(no_ack=False, fail=False)
                    if message is None:
                        break
                    messages.append(message)
            yield messages

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
        """Send the original message to its group's queue (no ``eventbus-*`` headers: attempt
        1, no metadata), with a confirm, then remove it from the DLQ."""
        for dlq in self._selected(None):
            async with self._browse(dlq) as messages:
                for message in messages:
                    record = self._record(dlq, message)
                    if record.id != dead_letter_id:
                        continue
                    headers = without_carried(received_headers(message))
                    headers[DESTINATION] = record.destination
                    await self._link.send("", work_queue(dlq), copy_of(message, headers))
                    with errors(f"removing {dead_letter_id!r} from {dlq!r}"):
                        await message.ack()
                    return
        raise DeadLetterNotFound(dead_letter_id)

    async def purge(self, *, group: str | None = None) -> int:
        count = 0
        for dlq in self._selected(group):
            what = f"purging {dlq!r}"
            async with self._channel(what) as channel:
                with errors(what):
                    queue = await channel.get_queue(dlq, ensure=False)
                    result = await queue.purge()
                count += int(result.message_count or 0)
        return count

    def _record(self, dlq: str, message: AbstractIncomingMessage) -> DeadLetterRecord:
        headers = received_headers(message)
        if _PROVENANCE_ID in headers:
            values = {k: v for k, v in headers.items() if k.startswith(DLQ_PREFIX)}
            return from_provenance(values, headers, message.body)
        return _from_x_death(dlq, self._queues[dlq], headers, message)


def _from_x_death(
    dlq: str, group: str, headers: dict[str, Any], message: AbstractIncomingMessage
) -> DeadLetterRecord:
    """A message RabbitMQ dead-lettered itself: the record its first ``x-death`` entry gives,
    with a stable id derived from that entry and the message."""
    death = _first_death(headers)
    reason = text(death.get("reason", "rejected"))
    count = whole_number(text(death.get("count", 1)), 1)
    keys = death.get("routing-keys")
    routing_key = text(keys[0]) if isinstance(keys, list) and keys else message.routing_key
    stamp = f"{dlq}|{message.message_id}|{death.get('time')}|{death.get('count')}"
    digest = hashlib.sha1(stamp.encode() + hashlib.sha1(message.body).digest()).hexdigest()
    at = death.get("time")
    when = at.replace(tzinfo=at.tzinfo or timezone.utc) if isinstance(at, datetime) else None
    carried = read_carried(headers)
    event = _event_of(headers, message.body)
    return DeadLetterRecord(
        id=f"x-death-{digest[:32]}",
        destination=carried.destination or routing_key or "",
        group=group,
        subscription="",
        reason=f"{reason} by RabbitMQ (x-death)",
        error_type="",
        error_message=f"RabbitMQ dead-lettered the message from "
        f"{text(death.get('queue', '?'))} ({reason}, {count} time(s))",
        attempts=carried.attempt or 1,
        headers=headers,
        body=message.body,
        event_id=event.get("id"),
        event_type=event.get("type"),
        traceparent=event.get("traceparent"),
        first_failure_at=when,
        last_failure_at=when,
    )


def _first_death(headers: Mapping[str, Any]) -> Mapping[str, Any]:
    """The newest ``x-death`` entry (RabbitMQ puts it first), or an empty one."""
    deaths = headers.get("x-death")
    death = deaths[0] if isinstance(deaths, list) and deaths else None
    return death if isinstance(death, dict) else {}


def _event_of(headers: Mapping[str, Any], body: bytes) -> dict[str, str | None]:
    """The id, type and traceparent of the event the message carries, where it carries one:
    with no provenance, the message itself is the only source."""
    try:
        envelope = decode(headers, body)
    except DecodeError:
        return {}
    return {"id": envelope.id, "type": envelope.type, "traceparent": envelope.traceparent}
