"""One subscription's consumer: fetching, admitting, committing, rebalancing, giving back.

Each subscription is an ``AIOKafkaConsumer`` in its Kafka group (:func:`~.topology.kafka_group`)
reading its topic (or pattern) and its group's retry topics, with ``enable_auto_commit=False``.
``start`` returns once the group has been joined.

**Commits after handling.** Per partition (:class:`_Partition`) the consumer keeps the offsets
in flight and commits the lowest unfinished one, or one past the last delivered when none is,
so with ``concurrency > 1`` a crash never skips an unhandled message. Commits are coalesced by
a background task. A delivery handed back (``release``, a settle that kept failing) seeks its
partition back to it, and nothing past it is committed until it has been read again.

**Rebalances.** The revoked partitions' in-flight work gets ``revoke_timeout`` seconds to
finish; what is still running then is abandoned uncommitted (settling it later commits
nothing), and the new owner handles it again.

**Retries** are copies on the retry topics (:meth:`KafkaConsumer.republish`), read by this
same consumer: a retry partition whose head is not due is paused until it is, never slept on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from aiokafka import (  # type: ignore[import-untyped]
    AIOKafkaConsumer,
    ConsumerRebalanceListener,
    TopicPartition,
)
from aiokafka.errors import KafkaError  # type: ignore[import-untyped]

from eventbus.brokers._wire import DUE, carried_headers, text, whole_number, without_carried
from eventbus.brokers.kafka.delivery import KafkaDelivery, Settling, _Partition
from eventbus.brokers.kafka.driver import ERRORS, Producer, encode_headers, now_ms
from eventbus.brokers.kafka.topology import (
    Settings,
    check_topic,
    dlq_topic,
    kafka_group,
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


class KafkaConsumer(ConsumerRebalanceListener, Settling):  # type: ignore[misc]
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
        self.group_id = kafka_group(self.group, sub.topic, sub.is_pattern)
        self.retry_topics = settings.retry_topics(self.group, sub.topic)
        self._retry_set = frozenset(self.retry_topics)
        self._retry_by_tier = dict(zip(settings.retry_tiers, self.retry_topics, strict=True))
        self._kafka: Any = None
        self._parts: dict[Any, _Partition] = {}
        self._timers: dict[Any, asyncio.TimerHandle] = {}
        # Retry partitions: those being fetched until found empty (with the time, in epoch ms,
        # from which a fetch counts), and those paused because they were empty.
        self._polling: dict[Any, int] = {}
        self._idle: set[Any] = set()
        self._poller: asyncio.TimerHandle | None = None
        self._generation = 0
        self._joined = asyncio.Event()
        self._settled = asyncio.Event()
        self._dirty: set[Any] = set()
        self._wake = asyncio.Event()
        self._committer: asyncio.Task[None] | None = None
        self._rewound: set[Any] = set()  # partitions sought back since the last fetch
        self._closed = False

    async def start(self) -> None:
        """Subscribe and wait (up to ``join_timeout``) until the group is joined."""
        sub, settings = self.sub, self.settings
        internal = [*self.retry_topics, dlq_topic(self.group)]
        await self._producer.touch(
            internal if sub.is_pattern else [check_topic(sub.topic), *internal]
        )
        self._kafka = AIOKafkaConsumer(
            **settings.consumer_config(group_id=self.group_id, enable_auto_commit=False)
        )
        with ERRORS(f"start a consumer for {sub.topic!r}"):
            await self._kafka.start()
        if sub.is_pattern:
            regex = subscription_regex(sub.topic, self.retry_topics)
            self._kafka.subscribe(pattern=regex, listener=self)
        else:
            self._kafka.subscribe(topics=[sub.topic, *self.retry_topics], listener=self)
        try:
            await asyncio.wait_for(self._joined.wait(), settings.join_timeout)
        except asyncio.TimeoutError:
            await self._kafka.stop()
            raise BrokerUnavailable(
                f"consumer group {self.group!r} was not joined within {settings.join_timeout}s; "
                "raise join_timeout=..., or check the brokers and session_timeout_ms"
            ) from None
        loop = asyncio.get_running_loop()
        self._committer = loop.create_task(self._commit_loop())
        self._poller = loop.call_later(settings.retry_poll_interval, self._poll_retries)

    @property
    def nack_delay(self) -> float:
        return self.settings.nack_delay

    # ---------------------------------------------------------------- rebalancing
    async def on_partitions_assigned(self, assigned: Any) -> None:
        now = now_ms()
        for tp in assigned:
            self._parts[tp] = _Partition()
            if tp.topic in self._retry_set:
                self._polling[tp] = now  # read until found empty, then paused
        self._generation += 1
        self._joined.set()

    async def on_partitions_revoked(self, revoked: Any) -> None:
        """Let in-flight work of the revoked partitions finish (bounded), commit what is safe."""
        self._generation += 1
        parts = {tp: self._parts[tp] for tp in revoked if tp in self._parts}
        deadline = time.monotonic() + self.settings.revoke_timeout
        while any(p.inflight for p in parts.values()) and time.monotonic() < deadline:
            self._settled.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._settled.wait(), deadline - time.monotonic())
        abandoned = sum(len(p.inflight) for p in parts.values())
        if abandoned:
            log.warning("%s: %d in-flight message(s) abandoned on rebalance", self.group, abandoned)
        await self._commit(set(parts))
        for tp in parts:
            del self._parts[tp]
            timer = self._timers.pop(tp, None)
            if timer is not None:
                timer.cancel()
        for tp in revoked:
            self._polling.pop(tp, None)
            self._idle.discard(tp)

    # ---------------------------------------------------------------- retry partitions
    # Every fetch carries every unpaused partition it asks for, and a subscription has a retry
    # topic per tier besides its main topic: fetching them all every time would make each
    # fetch several times larger (and each response as much longer to decode) for partitions
    # that are nearly always empty. So a retry partition found empty (position at the
    # highwater of a fetch made after it was resumed) is paused, and every
    # ``retry_poll_interval`` the empty ones are resumed for a fetch. A retry written into a
    # tier of at least that interval is seen before it is due, so it is as punctual as
    # before; one of a shorter delay (tier 0) is picked up at most that interval later.
    # (Paused partitions still cost a little: aiokafka's fetch loop visits every assigned
    # partition on each turn. A consumer of their own in the same group would avoid that,
    # but makes every join and rebalance of the group slower.)

    def _poll_retries(self) -> None:
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        self._poller = loop.call_later(self.settings.retry_poll_interval, self._poll_retries)
        now, idle, self._idle = now_ms(), self._idle, set()
        for tp in idle:
            if tp in self._parts:
                with contextlib.suppress(KafkaError, KeyError, AssertionError):
                    self._kafka.resume(tp)
                    self._polling[tp] = now

    async def _pause_empty_retries(self) -> None:
        kafka = self._kafka
        for tp, since in list(self._polling.items()):
            try:
                polled, highwater = kafka.last_poll_timestamp(tp), kafka.highwater(tp)
                if polled is None or polled < since or highwater is None:
                    continue  # not fetched since it was resumed: keep it in the fetches
                if await kafka.position(tp) < highwater:
                    continue  # records left
                self._polling.pop(tp, None)
                if tp in self._parts and tp not in self._timers:
                    kafka.pause(tp)
                    self._idle.add(tp)
            except (KafkaError, KeyError, AssertionError):  # no longer assigned
                self._polling.pop(tp, None)

    # ---------------------------------------------------------------- committing
    def settle(self, delivery: KafkaDelivery) -> None:
        """``delivery`` is done: its offset may be committed."""
        part = delivery.partition
        if self._parts.get(delivery.tp) is not part:
            return  # revoked meanwhile: the new owner handles it again; never commit it
        part.inflight.discard(delivery.offset)
        self._dirty.add(delivery.tp)
        self._settled.set()
        self._wake.set()

    def give_back(self, delivery: KafkaDelivery) -> None:
        """Read ``delivery``'s record again: seek its partition back to it, and commit nothing
        past it until it has been read again (or, when the consumer closes, by the next owner).
        """
        tp, part = delivery.tp, delivery.partition
        if self._parts.get(tp) is not part:
            return  # revoked meanwhile: the new owner reads it from the committed offset
        part.inflight.discard(delivery.offset)
        part.returned.add(delivery.offset)
        self._settled.set()
        if not self._closed:
            with contextlib.suppress(KafkaError, KeyError, AssertionError):
                self._kafka.seek(tp, min(part.returned))
                self._rewound.add(tp)

    async def _commit_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            dirty, self._dirty = self._dirty, set()
            await self._commit(dirty)

    async def _commit(self, tps: set[Any]) -> None:
        offsets, parts = {}, {}
        for tp in tps:
            part = self._parts.get(tp)
            safe = part.safe() if part is not None else None
            if part is not None and safe is not None and safe > part.committed:
                offsets[tp], parts[tp] = safe, part
        if not offsets:
            return
        try:
            await self._kafka.commit(offsets)
        except KafkaError as exc:  # a rebalance or a lost coordinator: redelivery, not loss
            log.warning("%s: could not commit %s: %r", self.group, offsets, exc)
            self._dirty |= {tp for tp in offsets if self._parts.get(tp) is parts[tp]}
            return
        for tp, offset in offsets.items():
            parts[tp].committed = max(parts[tp].committed, offset)

    # ---------------------------------------------------------------- fetching
    def __aiter__(self) -> AsyncIterator[KafkaDelivery]:
        return self._deliveries()

    async def _deliveries(self) -> AsyncIterator[KafkaDelivery]:
        while not self._closed:
            self._rewound.clear()
            batch = await self._fetch()
            generation, finished = self._generation, False
            rest: dict[Any, int] = {tp: recs[0].offset for tp, recs in batch.items() if recs}
            skip: set[Any] = set()
            try:
                for tp, record in [(tp, r) for tp, recs in batch.items() for r in recs]:
                    if generation != self._generation:
                        break  # rebalanced: positions were reset to the committed offsets
                    if tp in self._rewound:  # sought back: the rest of it is read again
                        skip.add(tp)
                        rest.pop(tp, None)
                    if tp in skip:
                        continue
                    delivery = self._admit(tp, record)
                    if delivery is None:
                        skip.add(tp)
                        rest.pop(tp, None)
                        continue
                    rest[tp] = record.offset + 1
                    yield delivery
                finished = True
            finally:
                if not finished and generation == self._generation and not self._closed:
                    for tp, offset in rest.items():  # not handed out: fetch them again
                        if tp not in self._rewound:  # else already sought back further
                            self._kafka.seek(tp, offset)

    async def _fetch(self) -> dict[Any, list[Any]]:
        with ERRORS(f"fetch from {self.sub.topic!r}"):
            batch: dict[Any, list[Any]] = await self._kafka.getmany(
                timeout_ms=1000, max_records=self.settings.max_records
            )
        if self._polling:
            await self._pause_empty_retries()
        return batch

    def _admit(self, tp: Any, record: Any) -> KafkaDelivery | None:
        """The delivery of ``record``, or None when its partition is no longer ours or it is a
        retry copy not due yet (then its partition is held at it until it is)."""
        part = self._parts.get(tp)
        if part is None:
            return None
        headers = dict(record.headers)
        if DUE in headers:
            wait = whole_number(text(headers[DUE]), 0) / 1000 - time.time()
            if wait > 0:
                self._kafka.seek(tp, record.offset)  # hold the head of this retry partition
                self._kafka.pause(tp)
                self._polling.pop(tp, None)
                self._idle.discard(tp)
                loop = asyncio.get_running_loop()
                self._timers[tp] = loop.call_later(wait, self._resume, tp, part)
                return None
        part.inflight.add(record.offset)
        part.returned.discard(record.offset)
        part.next = record.offset + 1
        return KafkaDelivery(self, tp, part, record, headers)

    def _resume(self, tp: Any, part: _Partition) -> None:
        self._timers.pop(tp, None)
        if self._parts.get(tp) is part and not self._closed:
            self._kafka.resume(tp)
            self._polling[tp] = now_ms()

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
        """Records of the subscribed topics (retry topics included) past the group's committed
        offsets, over all their partitions, not only those assigned here. A partition the group
        never committed counts from its first record, as ``auto_offset_reset="earliest"`` reads
        it (from its end, counting nothing, under ``"latest"``)."""
        kafka, sub = self._kafka, self.sub
        topics = kafka.subscription() if sub.is_pattern else {sub.topic, *self.retry_topics}
        tps = [
            TopicPartition(topic, partition)
            for topic in sorted(topics)
            for partition in sorted(kafka.partitions_for_topic(topic) or ())
        ]
        if not tps:
            return 0
        with ERRORS(f"read the lag of group {self.group_id!r}"):
            ends = await kafka.end_offsets(tps)
            committed = await asyncio.gather(*(kafka.committed(tp) for tp in tps))
            never = [tp for tp, offset in zip(tps, committed, strict=True) if offset is None]
            earliest = self.settings.consumer_config().get("auto_offset_reset") == "earliest"
            starts = await kafka.beginning_offsets(never) if never and earliest else {}
        return sum(
            max(0, ends[tp] - (offset if offset is not None else starts.get(tp, ends[tp])))
            for tp, offset in zip(tps, committed, strict=True)
        )

    async def close(self) -> None:
        """Stop fetching and commit what is safe; unsettled deliveries stay uncommitted, so
        the group gets them again."""
        if self._closed:
            return
        self._closed = True
        self._on_close(self)
        for timer in self._timers.values():
            timer.cancel()
        if self._poller is not None:
            self._poller.cancel()
        if self._committer is not None:
            self._committer.cancel()
            await asyncio.gather(self._committer, return_exceptions=True)
        await self._commit(set(self._parts))
        with contextlib.suppress(KafkaError):
            await self._kafka.stop()
