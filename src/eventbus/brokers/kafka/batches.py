"""Records published together, one record batch per partition (aiokafka's batch API).

Handing records to ``AIOKafkaProducer.send()`` one at a time costs its Python work for every
record: the metadata wait, the partitioner, the size estimate, the accumulator. Here records
are instead placed on their partitions, written into one ``create_batch()`` builder per
partition (a new one when a builder is full) and handed over with ``send_batch()``: that work
once per batch, and each batch's future resolves once Kafka has all its records (``acks`` as
configured). :class:`RecordBatcher` does it for the records of one ``publish_many``;
:class:`PublishQueue` for the ``publish`` calls made in one turn of the event loop (100
tasks publishing at once, say), each of which still returns only once Kafka has its record.

Placement is what ``send()`` would do: a keyed record goes where the producer's partitioner
puts its key (aiokafka's default is the Java client's murmur2, so other producers agree), a
record without a key to any available partition, taken in turn. Records of one partition keep
the order they were given in, and a partition's batches are handed over in order, so one key's
events stay in order. A record over the producer's ``max_request_size`` is refused before any
record is handed over, as ``send()`` refuses it.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any

from aiokafka.partitioner import DefaultPartitioner  # type: ignore[import-untyped]
from aiokafka.record.default_records import (  # type: ignore[import-untyped]
    DefaultRecordBatchBuilder,
)

from eventbus.brokers.kafka.driver import Headers, mapped, reraise
from eventbus.brokers.kafka.partitioner import KeyPartitioner
from eventbus.errors import PublishError

__all__ = ["PublishQueue", "Record", "RecordBatcher", "unawaited"]

Record = tuple[str, bytes | None, bytes | None, Headers]
"""A record to publish: topic, value, key, headers."""

_estimate = DefaultRecordBatchBuilder.estimate_size_in_bytes
_DEFAULTS = (KeyPartitioner, DefaultPartitioner)
"""Partitioners that place a record without a key anywhere: the batcher takes turns instead."""


class RecordBatcher:
    """Hands records to one producer as per-partition batches (see the module documentation).

    ``producer_config`` is what the producer is built from (``Settings.producer_config``):
    its ``partitioner`` places keyed records, and every record when it is not one of the
    defaults, and its ``max_request_size`` bounds a record.
    """

    def __init__(self, producer_config: Mapping[str, Any]) -> None:
        self._partitioner = producer_config["partitioner"]
        self._places_keyless = not isinstance(self._partitioner, _DEFAULTS)
        self._max_request_size = int(producer_config["max_request_size"])
        self._turn = itertools.count()

    async def send(
        self,
        producer: Any,
        records: Sequence[Record],
        sent: list[tuple[asyncio.Future[Any], list[int]]],
        *,
        checked: bool = False,
    ) -> None:
        """Hand ``records`` to ``producer``, adding to ``sent`` as each batch is handed over
        its future (resolved once Kafka has the batch) and the positions in ``records`` of
        the records it holds; should it fail, ``sent`` says what was handed over before.
        Every size is checked first (:meth:`check_size`) unless ``checked``."""
        if not checked:
            for record in records:
                self.check_size(record)
        by_partition: dict[tuple[str, int], list[int]] = {}
        placed: dict[str, tuple[list[int], list[int]]] = {}
        for at, record in enumerate(records):
            topic = record[0]
            partitions = placed.get(topic)
            if partitions is None:
                partitions = placed[topic] = await _partitions(producer, topic)
            where = (topic, self._place(record[2], *partitions))
            by_partition.setdefault(where, []).append(at)
        rounds = [_builders(producer, records, held) for held in by_partition.values()]
        # The first batch of every partition first, so that they can share a produce request.
        for turn in itertools.zip_longest(*rounds):
            for (topic, partition), batch in zip(by_partition, turn, strict=True):
                if batch is not None:
                    builder, held = batch
                    future = await producer.send_batch(builder, topic, partition=partition)
                    sent.append((future, held))

    def check_size(self, record: Record) -> None:
        """Refuse a record over the producer's ``max_request_size`` (PublishError)."""
        topic, value, key, headers = record
        size = _estimate(key, value, headers)
        if size > self._max_request_size:
            raise PublishError(
                f"a record for {topic!r} is {size} bytes, over the producer's "
                f"max_request_size of {self._max_request_size}; nothing was sent. Raise "
                "producer_options={'max_request_size': ...} as far as the brokers' "
                "message.max.bytes allows, or send smaller events"
            )

    def _place(self, key: bytes | None, every: list[int], available: list[int]) -> int:
        if key is not None or self._places_keyless:
            return int(self._partitioner(key, every, available))
        pool = available or every
        return pool[next(self._turn) % len(pool)]


class PublishQueue:
    """The ``publish`` calls of one producer, taken a turn of the event loop at a time.

    The first call of a turn leads it: it lets the loop finish the turn, so that the calls
    the other ready tasks make meanwhile (many tasks publishing at once) join it, and then
    hands the whole turn over together, as :class:`RecordBatcher` does. A call that is still
    alone goes straight to ``producer.send()``. Taking whole turns keeps a burst in one
    produce request: were the first call sent at once, aiokafka's sender would take it into
    a request of its own before the rest arrive, and the publishers would then keep taking
    turns in two requests (measured: two round trips per hundred concurrent publishes
    instead of one). Either way what a call returns is awaited until Kafka has its record,
    and raises as its batch failed (aiokafka's errors mapped to eventbus's, as
    ``KafkaBroker.publish`` documents); an oversized record fails its own call only. A call
    cancelled before its turn is handed over is not sent; the others of its turn still are.

    :meth:`flush` waits until every record collected so far has been handed to the producer
    (before the producer closes).
    """

    def __init__(self, batcher: RecordBatcher) -> None:
        self._batcher = batcher
        self._records: list[Record] | None = None  # the turn being collected, if one is
        self._futures: list[asyncio.Future[Any] | None] = []  # None: a first call not run yet
        self._handing: set[asyncio.Task[None]] = set()
        self._producer: Any = None

    def publish(self, producer: Any, record: Record) -> Awaitable[None]:
        """Hand ``record`` to ``producer``; await what this returns until Kafka has it.

        A call that joins a turn returns its record's future itself, resolved when its
        batch is: a hundred tasks publishing at once then wait on no coroutine of ours."""
        self._batcher.check_size(record)
        records = self._records
        if records is None:
            records = self._records = [record]
            self._futures, self._producer = [None], producer
            return self._lead(producer, record, records)
        future = asyncio.get_running_loop().create_future()
        records.append(record)
        self._futures.append(future)
        if len(records) == 2:  # the turn ends even should its first call never run
            asyncio.get_running_loop().call_soon(self._end_turn, records)
        return future

    async def _lead(self, producer: Any, record: Record, records: list[Record]) -> None:
        """The first call of a turn: sent alone if no other call joined it by the end of
        the turn, else with the others, first."""
        if self._records is not records:  # the turn ended before this call ran
            await self._send_one(producer, record)
            return
        mine = self._futures[0] = asyncio.get_running_loop().create_future()
        try:
            await asyncio.sleep(0)  # the rest of the turn: the calls made in it join
        except BaseException:
            mine.cancel()
            self._end_turn(records)  # the calls that joined are still sent
            raise
        if self._records is records and len(records) == 1:
            self._records = None
            await self._send_one(producer, record)
            return
        self._end_turn(records)
        await mine

    def _end_turn(self, records: list[Record]) -> None:
        if self._records is records:
            self._hand_over()

    @staticmethod
    async def _send_one(producer: Any, record: Record) -> None:
        topic, value, key, headers = record
        try:
            await (await producer.send(topic, value, key=key, headers=headers))
        except Exception as exc:
            reraise(exc, f"publish to {topic!r}")

    async def flush(self) -> None:
        self._hand_over()
        while self._handing:
            await asyncio.wait(set(self._handing))

    def _hand_over(self) -> None:
        records, futures = self._records, self._futures
        self._records, self._futures = None, []
        if not records:
            return
        ready = [future for future in futures if future is not None and not future.done()]
        if len(ready) < len(records):  # cancelled, or a first call that never ran: not sent
            records = [
                record
                for record, future in zip(records, futures, strict=True)
                if future is not None and not future.done()
            ]
            if not records:
                return
        task = asyncio.get_running_loop().create_task(self._send(records, ready))
        self._handing.add(task)
        task.add_done_callback(self._handing.discard)

    async def _send(self, records: list[Record], futures: list[asyncio.Future[Any]]) -> None:
        sent: list[tuple[asyncio.Future[Any], list[int]]] = []
        try:
            await self._batcher.send(self._producer, records, sent, checked=True)
        except BaseException as exc:
            handed = {at for _, held in sent for at in held}
            for at, future in enumerate(futures):
                if at in handed or future.done():
                    continue  # settled with its batch, below; or its caller was cancelled
                if isinstance(exc, Exception):
                    future.set_exception(mapped(exc, f"publish to {records[at][0]!r}"))
                else:
                    future.cancel()
            if not isinstance(exc, Exception):
                raise
        finally:
            for batch, held in sent:
                mine = [futures[at] for at in held]
                batch.add_done_callback(functools.partial(self._settle, mine, records[held[0]][0]))

    def _settle(self, futures: list[asyncio.Future[Any]], topic: str, batch: Any) -> None:
        """Resolve the futures of a batch's records (all of ``topic``) as the batch was."""
        error = None if batch.cancelled() else batch.exception()
        for future in futures:
            if future.done():
                continue  # its caller was cancelled
            if batch.cancelled():
                future.cancel()
            elif error is not None:
                future.set_exception(mapped(error, f"publish to {topic!r}"))
            else:
                future.set_result(None)


def unawaited(futures: Sequence[asyncio.Future[Any]]) -> None:
    """Futures nobody will await (their call failed first): their outcome is taken, so a
    failed one is not reported as never retrieved."""
    for future in futures:
        future.add_done_callback(_take_outcome)


def _take_outcome(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


async def _partitions(producer: Any, topic: str) -> tuple[list[int], list[int]]:
    """Every partition of ``topic`` (sorted) and those with a leader, once metadata has it."""
    every = sorted(await producer.partitions_for(topic))
    available = list(producer.client.cluster.available_partitions_for_topic(topic))
    return every, available


def _builders(
    producer: Any, records: Sequence[Record], held: list[int]
) -> list[tuple[Any, list[int]]]:
    """The records at ``held`` written into batch builders, in order (a new builder when one
    is full): each builder with the positions of its records."""
    builder, mine = producer.create_batch(), list[int]()
    batches = [(builder, mine)]
    for at in held:
        _, value, key, headers = records[at]
        if builder.append(timestamp=None, key=key, value=value, headers=headers) is None:
            builder, mine = producer.create_batch(), []
            batches.append((builder, mine))
            builder.append(timestamp=None, key=key, value=value, headers=headers)
        mine.append(at)
    return batches
