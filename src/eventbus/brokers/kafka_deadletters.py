"""The Kafka adapter's dead-letter store: ``__eventbus.dlq.{group}`` topics.

A dead letter is a record keyed by its dead-letter id whose value and headers are the failed
message's, with provenance in ``eventbus-dlq-*`` headers. Kafka cannot delete a single
record, so ``replay`` and ``purge`` append a *tombstone* (the id as key, no value): listing
reads the topics from the beginning with a group-less consumer and skips tombstoned ids. On a
topic with ``cleanup.policy=compact`` Kafka eventually drops both. Two processes replaying
the same id at once may both redeliver it (at-least-once, like everything else here).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, TopicPartition  # type: ignore[import-untyped]

from eventbus.brokers.kafka import (
    DESTINATION,
    DLQ,
    DUE,
    INTERNAL,
    PREFIX,
    Headers,
    _encode,
    _header,
    dlq_topic,
    driver_errors,
    retry_topic,
)
from eventbus.deadletters import DeadLetterRecord
from eventbus.errors import BrokerUnavailable, DeadLetterNotFound, PublishError

if TYPE_CHECKING:
    from eventbus.brokers.kafka import KafkaBroker

__all__ = ["TRUNCATED", "KafkaDeadLetters"]

TRUNCATED = DLQ + "original-size"
"""Header of a dead letter stored with its body cut to fit: the body's original size."""
_RECORD_OVERHEAD = 1024  # record, batch and request framing, with room to spare


def _header_size(record: DeadLetterRecord, key: bytes | None) -> int:
    """About what the headers of ``record``'s dead letter take (provenance included)."""
    texts = [record.error_message, record.traceback, record.reason, record.subscription]
    size = sum(
        len(k) + (len(v) if isinstance(v, (bytes, str)) else 16) for k, v in record.headers.items()
    )
    return size + sum(len(t.encode("utf-8", "replace")) for t in texts) + len(key or b"") + 1024


_FIELDS = (
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


class KafkaDeadLetters:
    """``bus.dead_letters`` on Kafka; see the module documentation."""

    def __init__(self, broker: KafkaBroker) -> None:
        self._broker = broker
        self._reader: Any = None
        self._lock = asyncio.Lock()

    async def close(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            await reader.stop()

    async def add(self, record: DeadLetterRecord, subscribed_topic: str, key: bytes | None) -> None:
        """Append ``record``; ``subscribed_topic`` (the subscription's topic or pattern) lets
        a replay find the group's retry topic.

        A message too large for one produce request (the consumer took it, the producer's
        ``max_request_size`` refuses it) is stored with its body cut to fit, its original size
        in ``eventbus-dlq-original-size`` and the cut named in the reason; such a dead letter
        cannot be replayed.
        """
        body = record.body
        room = self._broker.max_request_size - _RECORD_OVERHEAD - _header_size(record, key)
        if len(body) > room:
            body = body[: max(0, room)]
            record = dataclasses.replace(
                record,
                reason=f"{record.reason} (stored cut to {len(body)} of its {len(record.body)} "
                "bytes: larger than a produce request may be)",
            )
        headers = self._headers(record, subscribed_topic, key)
        if body is not record.body:
            headers += [(TRUNCATED, str(len(record.body)).encode())]
        topic = dlq_topic(record.group)
        future = await self._broker.send(topic, body, record.id.encode(), headers)
        await self._broker._wait([future], topic)

    def _headers(
        self, record: DeadLetterRecord, subscribed_topic: str, key: bytes | None
    ) -> Headers:
        provenance: dict[str, Any] = {
            DLQ + f.replace("_", "-"): getattr(record, f) for f in _FIELDS
        }
        provenance[DLQ + "attempts"] = record.attempts
        provenance[DLQ + "topic"] = subscribed_topic
        for name in ("first_failure_at", "last_failure_at"):
            value = getattr(record, name)
            provenance[DLQ + name.replace("_", "-")] = value.isoformat() if value else None
        headers = _encode({k: v for k, v in record.headers.items() if not k.startswith(DLQ)})
        headers += [(k, v) for k, v in _encode(provenance) if v is not None]
        if key is not None:
            headers.append((DLQ + "key", key))
        return headers

    # ---------------------------------------------------------------- reading
    async def _records(self, group: str | None) -> dict[str, tuple[DeadLetterRecord, Any]]:
        """Live dead letters by id (oldest first) with the record each was read from."""
        async with self._lock:
            records = await self._read_all(group)
        live: dict[str, tuple[DeadLetterRecord, Any]] = {}
        for record in records:  # offset order within a partition; one id, one partition
            dead_id = (record.key or b"").decode("utf-8", "replace")
            if record.value is None:
                live.pop(dead_id, None)
            elif record.headers and dict(record.headers).get(DLQ + "id") is not None:
                live[dead_id] = (_dead_letter(record), record)
        return dict(sorted(live.items(), key=lambda item: item[1][1].timestamp))

    async def _read_all(self, group: str | None) -> list[Any]:
        if self._reader is None:
            reader = AIOKafkaConsumer(**self._broker.consumer_config(enable_auto_commit=False))
            with driver_errors("read dead letters", BrokerUnavailable):
                await reader.start()
            self._reader = reader
        reader = self._reader
        with driver_errors("read dead letters", BrokerUnavailable):
            topics = await reader.topics()
            wanted = [dlq_topic(group)] if group is not None else sorted(topics)
            names = [t for t in wanted if t in topics and t.startswith(INTERNAL + "dlq.")]
            tps = [
                TopicPartition(t, p) for t in names for p in reader.partitions_for_topic(t) or ()
            ]
            if not tps:
                return []
            reader.assign(tps)
            await reader.seek_to_beginning(*tps)
            return await _read_to_end(reader, tps)

    async def list(self, *, group: str | None = None, limit: int = 100) -> list[DeadLetterRecord]:
        return [record for record, _ in (await self._records(group)).values()][:limit]

    async def get(self, dead_letter_id: str) -> DeadLetterRecord | None:
        entry = (await self._records(None)).get(dead_letter_id)
        return entry[0] if entry else None

    async def replay(self, dead_letter_id: str) -> None:
        """Put the original bytes on the failed group's tier-0 retry topic (attempt 1), then
        tombstone the dead letter."""
        entry = (await self._records(None)).get(dead_letter_id)
        if entry is None:
            raise DeadLetterNotFound(dead_letter_id)
        record, raw = entry
        if TRUNCATED in dict(raw.headers):
            raise PublishError(
                f"dead letter {dead_letter_id!r} was stored cut ({record.reason}); replaying it "
                "would deliver a cut message. Its first bytes are in the record's .body: publish "
                "the event again from its source, then purge this dead letter"
            )
        headers: Headers = [(k, v) for k, v in raw.headers if not k.startswith(PREFIX)]
        headers += [
            (DESTINATION, record.destination.encode()),
            (DUE, str(int(time.time() * 1000)).encode()),
        ]
        key = dict(raw.headers).get(DLQ + "key")
        subscribed = _header(dict(raw.headers), DLQ + "topic") or record.destination
        topic = retry_topic(record.group, subscribed, 0.0)
        futures = [await self._broker.send(topic, raw.value, key, headers)]
        futures.append(await self._tombstone(raw))
        await self._broker._wait(futures, topic)

    async def purge(self, *, group: str | None = None) -> int:
        entries = (await self._records(group)).values()
        futures = [await self._tombstone(raw) for _, raw in entries]
        await self._broker._wait(futures, "the dead-letter topics")
        return len(futures)

    async def _tombstone(self, raw: Any) -> asyncio.Future[Any]:
        return await self._broker.send(raw.topic, None, raw.key, [])


async def _read_to_end(reader: Any, tps: Sequence[Any], timeout: float = 30.0) -> list[Any]:
    ends = await reader.end_offsets(tps)
    records: list[Any] = []
    remaining = [tp for tp in tps if await reader.position(tp) < ends[tp]]
    deadline = time.monotonic() + timeout
    while remaining:
        if time.monotonic() > deadline:
            raise BrokerUnavailable(f"could not read the dead-letter topics within {timeout}s")
        batch = await reader.getmany(*remaining, timeout_ms=200)
        for tp in remaining:
            records.extend(batch.get(tp, ()))
        remaining = [tp for tp in remaining if await reader.position(tp) < ends[tp]]
    return records


def _dead_letter(record: Any) -> DeadLetterRecord:
    headers: Mapping[str, Any] = dict(record.headers)

    def text(name: str) -> str | None:
        return _header(headers, DLQ + name)

    def when(name: str) -> datetime | None:
        value = text(name)
        return datetime.fromisoformat(value) if value else None

    fields = {f: text(f.replace("_", "-")) for f in _FIELDS}
    return DeadLetterRecord(
        **{f: fields[f] or "" for f in _FIELDS[:7]},
        attempts=int(text("attempts") or 1),
        headers={k: v for k, v in headers.items() if not k.startswith(DLQ)},
        body=record.value or b"",
        event_id=fields["event_id"],
        event_type=fields["event_type"],
        traceparent=fields["traceparent"],
        traceback=fields["traceback"] or "",
        first_failure_at=when("first-failure-at"),
        last_failure_at=when("last-failure-at") or datetime.now(timezone.utc),
    )
