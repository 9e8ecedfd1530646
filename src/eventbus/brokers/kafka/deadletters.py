"""The Kafka adapter's dead-letter store: ``__eventbus.dlq.{group}`` topics.

A dead letter is a record keyed by its dead-letter id whose value and headers are the failed
message's, with its provenance as written by :func:`eventbus.deadletters.provenance` (UTF-8
``eventbus-dlq-*`` headers) and read back by :func:`~eventbus.deadletters.from_provenance`.
Beside it, Kafka's own: the subscribed topic or pattern (``eventbus-dlq-topic``, so a replay
finds the group's retry topic), the original record key (``eventbus-dlq-key``) and, for a body
stored cut, its original size (``eventbus-dlq-original-size``).

Kafka cannot delete a single record, so ``replay`` and ``purge`` append a *tombstone* (the id
as key, no value): listing reads the topics from the beginning with a group-less consumer and
skips tombstoned ids. On a topic with ``cleanup.policy=compact`` Kafka eventually drops both.
Two processes replaying the same id at once may both redeliver it (at-least-once, like
everything else here).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition  # type: ignore[import-untyped]

from eventbus.brokers._wire import carried_headers, text, without_carried
from eventbus.brokers.kafka.driver import ERRORS, Headers, Producer, encode_headers, now_ms
from eventbus.brokers.kafka.topology import DLQ_TOPICS, Settings, dlq_topic, retry_topic
from eventbus.deadletters import DLQ_PREFIX, DeadLetterRecord, from_provenance, provenance
from eventbus.errors import BrokerUnavailable, DeadLetterNotFound, PublishError

__all__ = ["KEY", "TOPIC", "TRUNCATED", "KafkaDeadLetters"]

TOPIC = DLQ_PREFIX + "topic"
"""Header of a dead letter: the topic or pattern its subscription was to."""
KEY = DLQ_PREFIX + "key"
"""Header of a dead letter: the original record key (the record's own key is the id)."""
TRUNCATED = DLQ_PREFIX + "original-size"
"""Header of a dead letter stored with its body cut to fit: the body's original size."""
_ID = DLQ_PREFIX + "id"  # as :func:`eventbus.deadletters.provenance` writes it
_RECORD_OVERHEAD = 2048
"""Bytes a dead letter may need beyond its headers and body: record, batch and request
framing, the note of a cut in the reason and the size header, with room to spare."""
_HEADER_FRAMING = 8  # the varints around one record header, rounded up


class KafkaDeadLetters:
    """``bus.dead_letters`` on Kafka; see the module documentation.

    ``producer`` writes dead letters, replays and tombstones; ``settings`` give the produce
    request size and the configuration of the reader.
    """

    def __init__(self, settings: Settings, producer: Producer) -> None:
        self._settings = settings
        self._producer = producer
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
        headers = _stored_headers(record, subscribed_topic, key)
        room = self._settings.max_request_size - _RECORD_OVERHEAD - _size(headers) - len(record.id)
        body, size = record.body, len(record.body)
        if size > room:
            body = body[: max(0, room)]
            record = dataclasses.replace(
                record,
                reason=f"{record.reason} (stored cut to {len(body)} of its {size} bytes: "
                "larger than a produce request may be)",
            )
            headers = _stored_headers(record, subscribed_topic, key)
            headers.append((TRUNCATED, str(size).encode()))
        topic = dlq_topic(record.group)
        future = await self._producer.send(topic, body, record.id.encode(), headers)
        await self._producer.wait([future], topic)

    # ---------------------------------------------------------------- reading
    async def _records(self, group: str | None) -> dict[str, tuple[DeadLetterRecord, Any]]:
        """Live dead letters by id (oldest first) with the record each was read from."""
        async with self._lock:
            records = await self._read_all(group)
        live: dict[str, tuple[DeadLetterRecord, Any]] = {}
        for raw in records:  # offset order within a partition; one id, one partition
            dead_id = text(raw.key or b"")
            if raw.value is None:
                live.pop(dead_id, None)
                continue
            stored = dict(raw.headers)
            if stored.get(_ID) is not None:
                live[dead_id] = (from_provenance(stored, stored, raw.value), raw)
        return dict(sorted(live.items(), key=lambda item: item[1][1].timestamp))

    async def _read_all(self, group: str | None) -> list[Any]:
        if self._reader is None:
            reader = AIOKafkaConsumer(**self._settings.consumer_config(enable_auto_commit=False))
            with ERRORS("read dead letters"):
                await reader.start()
            self._reader = reader
        reader = self._reader
        with ERRORS("read dead letters"):
            topics = await reader.topics()
            wanted = [dlq_topic(group)] if group is not None else sorted(topics)
            names = [t for t in wanted if t in topics and t.startswith(DLQ_TOPICS)]
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

    # ---------------------------------------------------------------- replay and purge
    async def replay(self, dead_letter_id: str) -> None:
        """Put the original bytes on the failed group's tier-0 retry topic (attempt 1, due
        now, no metadata), then tombstone the dead letter."""
        entry = (await self._records(None)).get(dead_letter_id)
        if entry is None:
            raise DeadLetterNotFound(dead_letter_id)
        record, raw = entry
        stored: Mapping[str, Any] = dict(raw.headers)
        if TRUNCATED in stored:
            raise PublishError(
                f"dead letter {dead_letter_id!r} was stored cut ({record.reason}); replaying it "
                "would deliver a cut message. Its first bytes are in the record's .body: publish "
                "the event again from its source, then purge this dead letter"
            )
        carried = carried_headers(1, {}, destination=record.destination, due=str(now_ms()))
        headers = encode_headers({**without_carried(stored), **carried})
        subscribed = stored.get(TOPIC)
        topic = retry_topic(
            record.group, record.destination if subscribed is None else text(subscribed), 0.0
        )
        futures = [await self._producer.send(topic, raw.value, stored.get(KEY), headers)]
        futures.append(await self._tombstone(raw))
        await self._producer.wait(futures, topic)

    async def purge(self, *, group: str | None = None) -> int:
        entries = (await self._records(group)).values()
        futures = [await self._tombstone(raw) for _, raw in entries]
        await self._producer.wait(futures, "the dead-letter topics")
        return len(futures)

    async def _tombstone(self, raw: Any) -> asyncio.Future[Any]:
        return await self._producer.send(raw.topic, None, raw.key, [])


def _stored_headers(record: DeadLetterRecord, subscribed_topic: str, key: bytes | None) -> Headers:
    """The headers of ``record``'s dead letter: the message's own, then the provenance."""
    own = {k: v for k, v in record.headers.items() if not str(k).startswith(DLQ_PREFIX)}
    headers = encode_headers({**own, **provenance(record), TOPIC: subscribed_topic})
    if key is not None:
        headers.append((KEY, key))
    return headers


def _size(headers: Headers) -> int:
    """What ``headers`` take in a record (about; on the high side)."""
    return sum(len(name.encode()) + len(value or b"") + _HEADER_FRAMING for name, value in headers)


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
