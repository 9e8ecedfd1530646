"""``publish_many`` on Kafka: one record batch per partition, placed as ``publish`` places them.

Against a real broker (tansu auto-creates topics with 4 partitions). What a user relies on:
a key's events land on the partition its key hashes to (the same one ``publish`` and any
other producer with the default partitioner picks) and in the order given, events without a
key are spread over the partitions, a batch larger than one record batch arrives whole, and
a record the producer cannot send fails the call before anything is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition  # type: ignore[import-untyped]
from aiokafka.partitioner import DefaultPartitioner  # type: ignore[import-untyped]
from aiokafka.record.default_records import (  # type: ignore[import-untyped]
    DefaultRecordBatch,
)

from eventbus import Event, EventBus
from eventbus.envelope import Envelope
from eventbus.errors import PublishError
from tests.brokers.test_kafka import make, servers

pytestmark = [pytest.mark.anyio, pytest.mark.kafka]


class Numbered(Event):
    n: int
    pad: str = ""


def numbered(topic: str) -> type[Numbered]:
    """A fresh event type on a fresh topic."""
    return type("Numbered", (Numbered,), {"event_type": topic, "event_topic": topic})


async def read_all(url: str, topic: str, count: int) -> dict[int, list[tuple[bytes | None, int]]]:
    """The ``(key, n)`` of ``count`` records of ``topic``, by partition, in offset order."""
    reader = AIOKafkaConsumer(bootstrap_servers=servers(url), enable_auto_commit=False)
    await reader.start()
    try:
        await reader.topics()  # the metadata of every topic
        parts = sorted(reader.partitions_for_topic(topic) or ())
        reader.assign([TopicPartition(topic, p) for p in parts])
        await reader.seek_to_beginning()
        got: dict[int, list[tuple[bytes | None, int]]] = {p: [] for p in parts}
        seen = 0
        while seen < count:
            batch = await reader.getmany(timeout_ms=10_000)
            assert batch, f"only {seen} of {count} records arrived"
            for tp, records in batch.items():
                for record in records:
                    got[tp.partition].append(
                        (record.key, Numbered.model_validate_json(record.value).n)
                    )
                    seen += 1
        return got
    finally:
        await reader.stop()


async def test_keyed_events_land_where_their_key_hashes_in_order(kafka_url: str) -> None:
    topic = f"pk{uuid.uuid4().hex[:8]}"
    cls = numbered(topic)
    keys = [f"customer-{k}" for k in range(12)]
    async with EventBus(make(kafka_url), service="b") as bus:
        await bus.publish(cls(n=-1), key=keys[0])  # one by one first, for comparison
        await bus.publish_many([(cls(n=n), keys[n % len(keys)]) for n in range(240)])
    got = await read_all(kafka_url, topic, 241)
    every = sorted(got)
    assert len(every) == 4
    for partition, records in got.items():
        for record_key, _ in records:
            assert record_key is not None
            assert DefaultPartitioner()(record_key, every, every) == partition  # as send()
    for key in keys:
        ns = [n for records in got.values() for k, n in records if k == key.encode()]
        expected = [n for n in range(240) if keys[n % len(keys)] == key]
        assert ns == ([-1] if key == keys[0] else []) + expected


async def test_events_without_a_key_are_spread_and_all_arrive(kafka_url: str) -> None:
    topic = f"pn{uuid.uuid4().hex[:8]}"
    cls = numbered(topic)
    async with EventBus(make(kafka_url), service="b") as bus:
        await bus.publish_many([cls(n=n) for n in range(40)])
    got = await read_all(kafka_url, topic, 40)
    assert all(records for records in got.values()), "every partition gets some"
    assert sorted(n for records in got.values() for _, n in records) == list(range(40))
    for records in got.values():  # in the order given within each partition
        assert [n for _, n in records] == sorted(n for _, n in records)


async def test_a_call_larger_than_a_record_batch_arrives_whole_and_in_order(
    kafka_url: str,
) -> None:
    topic = f"pl{uuid.uuid4().hex[:8]}"
    cls = numbered(topic)
    pad = "x" * 1000  # 150 records of ~1.2 kB: about ten 16 KiB record batches on one partition
    async with EventBus(make(kafka_url), service="b") as bus:
        await bus.publish_many([(cls(n=n, pad=pad), "one-key") for n in range(150)])
    got = await read_all(kafka_url, topic, 150)
    assert [n for records in got.values() for _, n in records] == list(range(150))


async def test_a_record_over_max_request_size_fails_the_call_and_sends_nothing(
    kafka_url: str,
) -> None:
    topic = f"ps{uuid.uuid4().hex[:8]}"
    cls = numbered(topic)
    broker = make(kafka_url, producer_options={"max_request_size": 4096})
    async with EventBus(broker, service="b") as bus:
        with pytest.raises(PublishError, match="max_request_size of 4096; nothing was sent"):
            await bus.publish_many([cls(n=0), cls(n=1, pad="x" * 5000), cls(n=2)])
        await bus.publish_many([cls(n=3)])  # the producer is still usable
    got = await read_all(kafka_url, topic, 1)
    assert [n for records in got.values() for _, n in records] == [3]


async def test_a_configured_partitioner_places_every_record(kafka_url: str) -> None:
    topic = f"pc{uuid.uuid4().hex[:8]}"
    cls = numbered(topic)
    asked: list[bytes | None] = []

    def last_partition(key: bytes | None, every: list[int], available: list[int]) -> int:
        asked.append(key)
        return every[-1]

    broker = make(kafka_url, producer_options={"partitioner": last_partition})
    async with EventBus(broker, service="b") as bus:
        await bus.publish_many([cls(n=0), (cls(n=1), "k")])
    got = await read_all(kafka_url, topic, 2)
    assert got[max(got)] == [(None, 0), (b"k", 1)]
    assert asked == [None, b"k"]


async def test_one_call_shares_produce_requests(kafka_url: str) -> None:
    topic = f"pr{uuid.uuid4().hex[:8]}"
    cls = numbered(topic)
    async with EventBus(make(kafka_url), service="b") as bus:
        await bus.publish(cls(n=-1))  # metadata and connection ready
        with produce_requests(bus, request_batches) as produced:
            await bus.publish_many([cls(n=n) for n in range(100)])
    assert sum(produced) == 4  # one record batch per partition, 25 records each
    assert len(produced) <= 4


async def test_concurrent_publishers_share_one_produce_request_a_round(kafka_url: str) -> None:
    # Forty tasks publish five events each, every one awaited: each round of forty goes out in
    # one produce request, the first call of the round included. Were a round's first call
    # sent ahead of the rest it would take a request of its own, and the publishers would
    # keep taking turns in two requests a round from then on.
    topic = f"pc{uuid.uuid4().hex[:8]}"
    cls = numbered(topic)
    async with EventBus(make(kafka_url), service="b") as bus:
        await bus.publish(cls(n=-1))  # metadata and connection ready

        async def publisher(first: int) -> None:
            for n in range(first, first + 5):
                await bus.publish(cls(n=n))

        with produce_requests(bus, request_records) as produced:
            await asyncio.gather(*(publisher(5 * p) for p in range(40)))
    assert produced == [40] * 5
    got = await read_all(kafka_url, topic, 201)
    assert sorted(n for records in got.values() for _, n in records) == list(range(-1, 200))


@contextlib.contextmanager
def produce_requests(bus: EventBus, measure: Callable[[Any], int]) -> Iterator[list[int]]:
    """``measure`` of every produce request the bus's producer sends meanwhile, in order."""
    client = bus.broker._producer.client  # type: ignore[attr-defined]
    measured: list[int] = []
    send = client.send

    async def counting(node_id: int, request: Any, **kwargs: Any) -> Any:
        if type(request).__name__ == "ProduceRequest":
            measured.append(measure(request))
        return await send(node_id, request, **kwargs)

    client.send = counting
    try:
        yield measured
    finally:
        del client.send


def request_batches(request: Any) -> int:
    """The record batches a produce request carries."""
    return sum(len(parts) for _, parts in request._topics)


def request_records(request: Any) -> int:
    """The records a produce request carries, read back from its record batches."""
    count = 0
    for _, parts in request._topics:
        for _, data in parts:
            batch = DefaultRecordBatch(bytes(data))
            count += sum(1 for _ in batch)
    return count


async def test_concurrent_publishes_land_where_their_keys_hash(kafka_url: str) -> None:
    topic = f"qk{uuid.uuid4().hex[:8]}"
    cls = numbered(topic)
    keys = [f"order-{k}" for k in range(7)]
    async with EventBus(make(kafka_url), service="b") as bus:
        await bus.publish(cls(n=-1), key=keys[0])  # metadata and connection ready

        async def one_key(key: str) -> None:  # each key's events one after the other
            for n in range(20):
                await bus.publish(cls(n=n), key=key)

        await asyncio.gather(
            *(one_key(key) for key in keys), *(bus.publish(cls(n=n)) for n in range(30))
        )
    got = await read_all(kafka_url, topic, 1 + 20 * len(keys) + 30)
    every = sorted(got)
    for partition, records in got.items():
        for record_key, _ in records:
            if record_key is not None:
                assert DefaultPartitioner()(record_key, every, every) == partition
    for key in keys:
        ns = [n for records in got.values() for k, n in records if k == key.encode()]
        assert ns == ([-1] if key == keys[0] else []) + list(range(20))
    keyless = sorted(n for records in got.values() for k, n in records if k is None)
    assert keyless == list(range(30))


async def test_an_oversized_concurrent_publish_fails_alone(kafka_url: str) -> None:
    topic = f"qs{uuid.uuid4().hex[:8]}"
    cls = numbered(topic)
    broker = make(kafka_url, producer_options={"max_request_size": 4096})
    async with EventBus(broker, service="b") as bus:
        await bus.publish(cls(n=-1))
        outcomes = await asyncio.gather(
            *(bus.publish(cls(n=n, pad="x" * 5000 if n == 3 else "")) for n in range(8)),
            return_exceptions=True,
        )
    failed = [n for n, outcome in enumerate(outcomes) if isinstance(outcome, Exception)]
    assert failed == [3]
    assert isinstance(outcomes[3], PublishError)
    got = await read_all(kafka_url, topic, 8)
    assert sorted(n for records in got.values() for _, n in records) == [-1, 0, 1, 2, 4, 5, 6, 7]


async def test_publishes_collected_when_the_broker_closes_are_sent(kafka_url: str) -> None:
    topic = f"qc{uuid.uuid4().hex[:8]}"
    broker = make(kafka_url)
    envelopes = [
        Envelope(
            id=f"{topic}-{n}", type=topic, source="t", data=Numbered(n=n).model_dump_json().encode()
        )
        for n in range(10)
    ]
    await broker.connect()
    await broker.publish(topic, envelopes[0])  # metadata and connection ready
    # The publishes run first, in order, and wait; close runs before their turn ends.
    await asyncio.gather(*(broker.publish(topic, e) for e in envelopes[1:]), broker.close())
    got = await read_all(kafka_url, topic, 10)
    assert sorted(n for records in got.values() for _, n in records) == list(range(10))
