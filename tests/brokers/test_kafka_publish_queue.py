"""How the Kafka adapter's publish queue settles calls collected while others wait (no server).

``tests/brokers/test_kafka_batches.py`` shows against a real broker that concurrent publishes
share record batches and arrive. What it cannot make a broker do on demand is fail a batch:
here a producer whose futures the test resolves stands in for aiokafka's, so that the calls
of one turn are seen to go out together, the first among them, to raise what a lone
``publish`` raises (aiokafka's errors mapped to eventbus's, naming the topic), and to leave
nothing behind that would hold a later lone call back, however their batch ended.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError  # type: ignore[import-untyped]
from aiokafka.partitioner import DefaultPartitioner  # type: ignore[import-untyped]

from eventbus.brokers.kafka.batches import PublishQueue, Record, RecordBatcher
from eventbus.errors import BrokerUnavailable, PublishError
from eventbus.testing import wait_until

pytestmark = pytest.mark.anyio


class Builder:
    def __init__(self) -> None:
        self.values: list[bytes | None] = []

    def append(self, *, timestamp: Any, key: Any, value: bytes | None, headers: Any) -> object:
        self.values.append(value)
        return object()  # the record's metadata: the builder had room


class Producer:
    """aiokafka's producer as the queue uses it; every future it returns is left to the test."""

    def __init__(self) -> None:
        self.sent: list[asyncio.Future[Any]] = []  # send(): one record each
        self.batches: list[tuple[Builder, asyncio.Future[Any]]] = []  # send_batch()
        self.client = SimpleNamespace(
            cluster=SimpleNamespace(available_partitions_for_topic=lambda topic: {0})
        )

    async def partitions_for(self, topic: str) -> set[int]:
        return {0}

    def create_batch(self) -> Builder:
        return Builder()

    async def send(self, topic: str, value: bytes, **_: Any) -> asyncio.Future[Any]:
        self.sent.append(asyncio.get_running_loop().create_future())
        return self.sent[-1]

    async def send_batch(self, builder: Builder, topic: str, *, partition: int) -> Any:
        future = asyncio.get_running_loop().create_future()
        self.batches.append((builder, future))
        return future


def record(n: int) -> Record:
    return ("orders", str(n).encode(), None, [])


def queue() -> PublishQueue:
    config = {"partitioner": DefaultPartitioner(), "max_request_size": 1_000_000}
    return PublishQueue(RecordBatcher(config))


async def started(producer: Producer, q: PublishQueue) -> list[asyncio.Task[None]]:
    """Four calls made in one turn of the loop, handed over as one batch, first call first."""

    async def publish(n: int) -> None:
        await q.publish(producer, record(n))

    tasks = [asyncio.create_task(publish(n)) for n in range(4)]
    await wait_until(lambda: bool(producer.batches), timeout=5)
    assert not producer.sent  # none of them went ahead on its own
    assert [builder.values for builder, _ in producer.batches] == [[b"0", b"1", b"2", b"3"]]
    return tasks


@pytest.mark.parametrize(
    ("failure", "raised"),
    [(KafkaTimeoutError(), BrokerUnavailable), (MessageSizeTooLargeError(), PublishError)],
)
async def test_the_calls_of_a_turn_raise_the_mapped_error_of_their_failed_batch(
    failure: Exception, raised: type[Exception]
) -> None:
    producer, q = Producer(), queue()
    tasks = await started(producer, q)
    producer.batches[0][1].set_exception(failure)
    for task in tasks:
        with pytest.raises(raised, match="publish to 'orders'") as caught:
            await task
        assert caught.value.__cause__ is failure
    await _lone(producer, q)  # the next call, alone in its turn, is sent straight away


async def _lone(producer: Producer, q: PublishQueue) -> None:
    """A call alone in its turn of the loop is sent on its own, not batched."""
    call = asyncio.ensure_future(q.publish(producer, record(9)))
    await wait_until(lambda: len(producer.sent) == 1, timeout=5)
    assert len(producer.batches) == 1
    producer.sent[0].set_result(None)
    await call


async def test_a_cancelled_call_of_a_turn_leaves_the_others_to_their_batch() -> None:
    producer, q = Producer(), queue()
    tasks = await started(producer, q)
    tasks[0].cancel()
    producer.batches[0][1].set_result(None)
    await asyncio.gather(*tasks[1:])
    with pytest.raises(asyncio.CancelledError):
        await tasks[0]
    await _lone(producer, q)


async def test_the_calls_that_joined_a_cancelled_first_call_are_still_sent() -> None:
    producer, q = Producer(), queue()
    first = asyncio.ensure_future(q.publish(producer, record(0)))
    joined = [asyncio.ensure_future(q.publish(producer, record(n))) for n in (1, 2)]
    first.cancel()  # before its turn ends: its record is not sent, theirs are
    with pytest.raises(asyncio.CancelledError):
        await first
    await wait_until(lambda: bool(producer.batches), timeout=5)
    assert [builder.values for builder, _ in producer.batches] == [[b"1", b"2"]]
    producer.batches[0][1].set_result(None)
    await asyncio.gather(*joined)
    await _lone(producer, q)


async def test_calls_cancelled_before_their_turn_ends_are_not_sent() -> None:
    producer, q = Producer(), queue()

    async def publish(n: int) -> None:
        await q.publish(producer, record(n))

    first = asyncio.create_task(publish(0))  # runs first in the next turn, and yields

    async def join_then_cancel() -> None:
        kept = asyncio.ensure_future(q.publish(producer, record(1)))
        dropped = asyncio.ensure_future(q.publish(producer, record(2)))
        first.cancel()  # while the first call waits for the turn to end
        dropped.cancel()
        await kept

    joined = asyncio.create_task(join_then_cancel())
    await wait_until(lambda: bool(producer.batches), timeout=5)
    assert [builder.values for builder, _ in producer.batches] == [[b"1"]]
    producer.batches[0][1].set_result(None)
    await joined
    with pytest.raises(asyncio.CancelledError):
        await first
    await _lone(producer, q)
