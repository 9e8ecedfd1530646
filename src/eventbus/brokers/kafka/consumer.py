"""One subscription's consumer: fetching, admitting, settling, giving back, retry copies.

Each subscription reads through two :class:`~.reader.Reader` s, both with
``enable_auto_commit=False``: the main one in the subscription's Kafka group
(:func:`~.topology.kafka_group`) for its topic or pattern, and one in a group of its own
(:func:`~.topology.retry_group`) for its retry topics. ``start`` returns once both groups
have been joined.

**Commits after handling.** Each reader commits the lowest unfinished offset of its
partitions (see :mod:`.reader`); commits are coalesced by a background task. A delivery handed
back (``release``, a settle that kept failing) seeks its partition back to it, and nothing past
it is committed until it has been read again.

**Retries** are copies on the retry topics (:meth:`KafkaConsumer.republish`). The retry reader
fetches in the background, long-polling for ``retry_poll_interval``; what it has fetched is
taken after a fetch of the main topic that came back empty, at least every
``retry_poll_interval`` while the main topic is busy, and after every fetch while a backlog
lasts. A retry partition whose head is not due is held at it until it is, never slept on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from eventbus.brokers._wire import DUE, carried_headers, text, whole_number, without_carried
from eventbus.brokers.kafka.delivery import KafkaDelivery, Settling
from eventbus.brokers.kafka.driver import ERRORS, Producer, encode_headers, now_ms
from eventbus.brokers.kafka.reader import Reader
from eventbus.brokers.kafka.records import read_record
from eventbus.brokers.kafka.topology import (
    Settings,
    check_topic,
    dlq_topic,
    kafka_group,
    retry_group,
    subscription_regex,
)
from eventbus.deadletters import DeadLetterRecord
from eventbus.errors import BrokerUnavailable
from eventbus.types import SubscriptionView

__all__ = ["DeadLetterSink", "KafkaConsumer"]

log = logging.getLogger("eventbus.kafka")


class DeadLetterSink(Protocol):
    """Where a delivery's dead letter goes (the broker's dead-letter store)."""

    async def add(self, record: DeadLetterRecord, subscribed_topic: str, key: bytes | None) -> None:
        """Store ``record``; ``subscribed_topic`` (topic or pattern) lets a replay find the
        group's retry topic, ``key`` is the record key of the original."""


class KafkaConsumer(Settling):
    """One subscription's consumer: the main topic(s) and the group's retry topics.

    ``producer`` writes the retry copies, ``dead_letters`` takes the dead letters, and
    ``on_close`` is told when the consumer has closed.
    """

    def __init__(
        self,
        settings: Settings,
        producer: Producer,
        dead_letters: DeadLetterSink,
        sub: SubscriptionView,
        on_close: Callable[[KafkaConsumer], None] = lambda consumer: None,
    ) -> None:
        self.settings, self.sub = settings, sub
        self._producer, self._dead, self._on_close = producer, dead_letters, on_close
        self.group: str = sub.group or ""
        self.retry_topics = settings.retry_topics(self.group, sub.topic)
        self._retry_set = frozenset(self.retry_topics)
        self._retry_by_tier = dict(zip(settings.retry_tiers, self.retry_topics, strict=True))
        config, revoke = settings.consumer_config(), settings.revoke_timeout
        self.main = Reader(
            self.group, kafka_group(self.group, sub.topic, sub.is_pattern), config, revoke
        )
        # The retry reader's fetches wait on the broker (long poll) for the poll interval,
        # whatever the main one's fetch_max_wait_ms: its partitions are nearly always empty.
        # Its topics hold this group's copies only, so a group that has committed nothing yet
        # reads them from the start, whatever auto_offset_reset says: no copy is skipped.
        self._wait_ms = round(settings.retry_poll_interval * 1000)
        config = {**config, "fetch_max_wait_ms": self._wait_ms, "auto_offset_reset": "earliest"}
        self.retries = Reader(self.group, retry_group(self.group, sub.topic), config, revoke)
        self._retries_at = 0.0  # monotonic time from which the retry reader is asked again
        self._retry_backlog = False
        self._dirty: set[Any] = set()
        self._wake = asyncio.Event()
        self._committer: asyncio.Task[None] | None = None
        self._rewound: set[Any] = set()  # partitions sought back since the last fetch
        self._closed = False

    @property
    def group_id(self) -> str:
        """The subscription's Kafka group (of its main topic or pattern)."""
        return self.main.group_id

    async def start(self) -> None:
        """Subscribe and wait (up to ``join_timeout``) until both groups are joined."""
        sub, settings = self.sub, self.settings
        internal = [*self.retry_topics, dlq_topic(self.group)]
        await self._producer.touch(
            internal if sub.is_pattern else [check_topic(sub.topic), *internal]
        )
        try:
            if sub.is_pattern:
                await self.main.start(pattern=subscription_regex(sub.topic))
            else:
                await self.main.start(topics=[sub.topic])
            await self.retries.start(topics=self.retry_topics)
            joined = asyncio.gather(self.main.joined.wait(), self.retries.joined.wait())
            await asyncio.wait_for(joined, settings.join_timeout)
        except asyncio.TimeoutError:
            await self._stop_readers()
            raise BrokerUnavailable(
                f"consumer group {self.group!r} was not joined within {settings.join_timeout}s; "
                "raise join_timeout=..., or check the brokers and session_timeout_ms"
            ) from None
        except BaseException:
            with contextlib.suppress(Exception):  # the error that stopped the start is the one
                await self._stop_readers()
            raise
        self._committer = asyncio.get_running_loop().create_task(self._commit_loop())

    @property
    def nack_delay(self) -> float:
        return self.settings.nack_delay

    def _reader(self, tp: Any) -> Reader:
        return self.retries if tp.topic in self._retry_set else self.main

    # ---------------------------------------------------------------- committing
    def settle(self, delivery: KafkaDelivery) -> None:
        """``delivery`` is done: its offset may be committed."""
        tp, part = delivery.tp, delivery.partition
        reader = self._reader(tp)
        if reader.parts.get(tp) is not part:
            return  # revoked meanwhile: the new owner handles it again; never commit it
        part.inflight.discard(delivery.offset)
        self._dirty.add(tp)
        reader.settled.set()
        self._wake.set()

    def give_back(self, delivery: KafkaDelivery) -> None:
        """Read ``delivery``'s record again: seek its partition back to it, and commit nothing
        past it until it has been read again (or, when the consumer closes, by the next owner).
        """
        tp, part, reader = delivery.tp, delivery.partition, self._reader(delivery.tp)
        if reader.parts.get(tp) is not part:
            return  # revoked meanwhile: the new owner reads it from the committed offset
        part.inflight.discard(delivery.offset)
        part.returned.add(delivery.offset)
        reader.settled.set()
        if not self._closed:
            reader.seek(tp, min(part.returned))
            self._rewound.add(tp)

    async def _commit_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            dirty, self._dirty = self._dirty, set()
            await self._commit(dirty)

    async def _commit(self, tps: set[Any]) -> None:
        for reader in (self.main, self.retries):
            if mine := tps & reader.parts.keys():  # each reader commits its own partitions
                self._dirty |= await reader.commit(mine)

    # ---------------------------------------------------------------- fetching
    def __aiter__(self) -> AsyncIterator[KafkaDelivery]:
        return self._deliveries()

    async def _deliveries(self) -> AsyncIterator[KafkaDelivery]:
        while not self._closed:
            self._rewound.clear()
            # Per reader: its generation when fetched, and per partition the first offset not
            # handed out yet.
            fetched = [
                (reader, reader.generation, batch, {tp: rs[0].offset for tp, rs in batch.items()})
                for reader, batch in await self._fetch()
            ]
            finished = False
            try:
                for reader, generation, batch, rest in fetched:
                    skip: set[Any] = set()
                    for tp, record in [(tp, r) for tp, records in batch.items() for r in records]:
                        if generation != reader.generation:
                            break  # rebalanced: positions were reset to the committed offsets
                        if tp in self._rewound:  # sought back: the rest of it is read again
                            skip.add(tp)
                            rest.pop(tp, None)
                        if tp in skip:
                            continue
                        delivery = self._admit(reader, tp, record)
                        if delivery is None:
                            skip.add(tp)
                            rest.pop(tp, None)
                            continue
                        rest[tp] = record.offset + 1
                        yield delivery
                finished = True
            finally:
                if not finished and not self._closed:
                    self._read_again(fetched)

    def _read_again(self, fetched: list[tuple[Reader, int, Any, dict[Any, int]]]) -> None:
        """Seek back to what a stopped iteration did not hand out, to fetch it again."""
        for reader, generation, _, rest in fetched:
            if generation == reader.generation:  # else the rebalance reset the positions
                for tp, offset in rest.items():
                    if tp not in self._rewound:  # else already sought back further
                        reader.seek(tp, offset)

    async def _fetch(self) -> list[tuple[Reader, dict[Any, list[Any]]]]:
        """A fetch of the main topic (waiting up to ``retry_poll_interval`` for one), then,
        when it came back empty, a backlog of retries lasts or the interval has passed, what
        the retry reader has fetched meanwhile (without waiting)."""
        max_records = self.settings.max_records
        with ERRORS(f"fetch from {self.sub.topic!r}"):
            batch = await self.main.kafka.getmany(timeout_ms=self._wait_ms, max_records=max_records)
            now = time.monotonic()
            if batch and not self._retry_backlog and now < self._retries_at:
                return [(self.main, batch)]
            self._retries_at = now + self.settings.retry_poll_interval
            retries = await self.retries.kafka.getmany(timeout_ms=0, max_records=max_records)
        self._retry_backlog = bool(retries)
        return [(self.main, batch), (self.retries, retries)] if retries else [(self.main, batch)]

    def _admit(self, reader: Reader, tp: Any, record: Any) -> KafkaDelivery | None:
        """The delivery of ``record``, or None when its partition is no longer ours or it is a
        retry copy not due yet (then its partition is held at it until it is)."""
        part = reader.parts.get(tp)
        if part is None:
            return None
        envelope = read_record(record.headers, record.value, record.key)  # an original of ours
        headers: dict[str, Any] | None = None
        if envelope is None:
            headers = dict(record.headers)
            if DUE in headers:
                wait = whole_number(text(headers[DUE]), 0) / 1000 - time.time()
                if wait > 0:
                    reader.hold(tp, record.offset, wait)
                    return None
        part.inflight.add(record.offset)
        part.returned.discard(record.offset)
        part.next = record.offset + 1
        return KafkaDelivery(self, tp, part, record, headers, envelope)

    # ---------------------------------------------------------------- sending on
    async def republish(self, delivery: KafkaDelivery, delay: float) -> None:
        """The retry-topic copy: original key, value and headers, the next attempt, metadata,
        due ``delay`` seconds from now."""
        carried = carried_headers(
            delivery.attempt + 1,
            delivery.metadata,
            due=str(now_ms() + int(delay * 1000)),
            destination=delivery.destination,
        )
        headers = encode_headers({**without_carried(delivery.headers), **carried})
        topic = self._retry_by_tier[self.settings.tier(delay)]
        future = await self._producer.send(topic, delivery.body, delivery.key, headers)
        await self._producer.wait([future], topic)

    async def dead_letter(self, delivery: KafkaDelivery, record: DeadLetterRecord) -> None:
        await self._dead.add(record, self.sub.topic, delivery.key)

    # ---------------------------------------------------------------- health
    async def lag(self) -> int:
        """Records of the subscribed topics past the main group's committed offsets, and of
        the retry topics past the retry group's, over all their partitions, not only those
        assigned here. A partition a group never committed counts from its first record, as
        ``auto_offset_reset="earliest"`` reads it (a main one from its end, counting nothing,
        under ``"latest"``; the retry group always reads from the first)."""
        sub = self.sub
        topics = self.main.kafka.subscription() if sub.is_pattern else {sub.topic}
        earliest = self.settings.consumer_config().get("auto_offset_reset") == "earliest"
        main = await self.main.lag(list(topics), earliest)
        return main + await self.retries.lag(self.retry_topics, earliest=True)

    async def close(self) -> None:
        """Stop fetching and commit what is safe; unsettled deliveries stay uncommitted, so
        the group gets them again."""
        if self._closed:
            return
        self._closed = True
        self._on_close(self)
        if self._committer is not None:
            self._committer.cancel()
            await asyncio.gather(self._committer, return_exceptions=True)
        await self._stop_readers()

    async def _stop_readers(self) -> None:
        await asyncio.gather(self.main.stop(), self.retries.stop())
