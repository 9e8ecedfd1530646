"""Broker-specific bad input, injected with the raw clients onto what eventbus reads.

The conformance suite (``eventbus.testing.contract_malformed``) covers what every adapter meets
alike; these are the inputs only one broker can carry: AMQP header values that are not text,
and a Kafka record larger than a produce request may be.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest
from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]

from eventbus import Context, Event, EventBus, PermanentError, PublishError, Router
from eventbus.brokers.kafka import KafkaBroker
from eventbus.brokers.rabbitmq import RabbitMQBroker, queue_name
from eventbus.testing import wait_until
from tests.brokers.test_kafka import uncommitted
from tests.brokers.test_rabbitmq import queue_depth

pytestmark = pytest.mark.anyio


class Job(Event):
    n: int


def job_type(ns: str) -> type[Job]:
    return type(f"Job_{ns}", (Job,), {"event_type": f"{ns}.job"})


class RawLongString(str):
    """A header value pamqp writes as an AMQP long string of any bytes, UTF-8 or not, as a
    producer written in another language may send it."""

    raw: bytes

    def __new__(cls, raw: bytes) -> RawLongString:
        text = super().__new__(cls, "raw")
        text.raw = raw
        return text

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return self.raw


@pytest.fixture
def ns() -> str:
    return f"b{uuid.uuid4().hex[:10]}"


# ---------------------------------------------------------------------------- RabbitMQ
@pytest.fixture
async def rabbit(rabbitmq_url: str) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    connection = await aio_pika.connect(rabbitmq_url)
    async with connection:
        yield await connection.channel()


def _ce_headers(ns: str, n: int, **extra: Any) -> dict[str, Any]:
    return {
        "ce-specversion": "1.0",
        "ce-id": f"{ns}-{n}",
        "ce-source": "a-java-producer",
        "ce-type": f"{ns}.job",
        **extra,
    }


@pytest.mark.rabbitmq
async def test_amqp_header_values_that_are_not_text_never_stall_a_consumer(
    rabbitmq_url: str, rabbit: aio_pika.abc.AbstractChannel, ns: str
) -> None:
    event_cls, router, got = job_type(ns), Router(), list[tuple[int, int]]()
    group = f"{ns}-g"

    @router.subscribe(event_cls, group=group)
    async def handle(event: Job, ctx: Context) -> None:
        got.append((event.n, ctx.attempt))
        if event.n == 3 and ctx.attempt == 1:
            raise RuntimeError("fails once: the requeue must republish its odd headers")

    broker = RabbitMQBroker(rabbitmq_url, prefetch=2)
    bus = EventBus(broker, service=ns, routers=[router], redelivery_delay=0.05)
    bad = [
        # a type that is not UTF-8 text, twice: with prefetch 2, two stuck ones stopped it
        _ce_headers(ns, 1, **{"ce-type": RawLongString(b"\xff\xfe")}),
        _ce_headers(ns, 2, **{"ce-type": RawLongString(b"\xc3\x28")}),
        # an AMQP byte array where the type should be text
        _ce_headers(ns, 4, **{"ce-type": bytearray(b"\x00\xff")}),
    ]
    async with bus:
        exchange = await rabbit.get_exchange("eventbus")
        for headers in bad:
            await exchange.publish(aio_pika.Message(b'{"n": 0}', headers=headers), f"{ns}.job")
        valid = [  # valid events with a header of another program's that is not UTF-8
            _ce_headers(ns, 3, **{"x-trace": RawLongString(b"\x80\x81")}),
            _ce_headers(ns, 5, **{"ce-type": bytearray(f"{ns}.job".encode())}),
        ]
        for headers, n in zip(valid, (3, 5), strict=True):
            body = json.dumps({"n": n}).encode()
            await exchange.publish(aio_pika.Message(body, headers=headers), f"{ns}.job")
        await bus.publish(event_cls(n=6))
        await wait_until(lambda: {n for n, _ in got} == {3, 5, 6})
        await wait_until(lambda: (3, 2) in got)  # requeued and handled again
        dead = await _listed(bus, group, 3)
    assert sorted(r.body for r in dead) == [b'{"n": 0}'] * 3
    assert {r.reason for r in dead} == {"undecodable"}
    assert all("ce-type" in r.headers for r in dead)
    assert await queue_depth(rabbitmq_url, queue_name(group, f"{ns}.job")) == 0


async def _listed(bus: EventBus, group: str, count: int) -> list[Any]:
    records: list[Any] = []

    async def enough() -> bool:
        records[:] = await bus.dead_letters.list(group=group)
        return len(records) >= count

    await wait_until(enough, timeout=20)
    return records


# ---------------------------------------------------------------------------- Kafka
@pytest.mark.kafka
async def test_a_record_larger_than_a_produce_request_is_dead_lettered_cut(
    kafka_url: str, ns: str
) -> None:
    event_cls, router, got = job_type(ns), Router(), list[int]()
    group = f"{ns}-big"
    router.subscribe(event_cls, group=group)(_collect(got))
    servers = kafka_url.removeprefix("kafka://")
    broker = KafkaBroker(servers)
    bus = EventBus(broker, service=ns, routers=[router])
    big = json.dumps({"n": "not a number", "pad": "x" * 2_000_000}).encode()  # fails validation
    async with bus:
        producer = AIOKafkaProducer(bootstrap_servers=servers, max_request_size=8_000_000)
        await producer.start()
        try:
            headers = [(k, v.encode()) for k, v in _ce_headers(ns, 1).items()]
            headers.append(("content-type", b"application/json"))
            await producer.send_and_wait(f"{ns}.job", big, headers=headers)
        finally:
            await producer.stop()
        await bus.publish(event_cls(n=2))
        await wait_until(lambda: got == [2], timeout=30)
        [record] = await _listed(bus, group, 1)
        assert f"stored cut to {len(record.body)} of its {len(big)} bytes" in record.reason
        assert big.startswith(record.body)
        assert 0 < len(record.body) < len(big)
        assert record.error_message  # the validation error is kept whole
        with pytest.raises(PublishError, match="stored cut"):
            await bus.dead_letters.replay(record.id)
        await wait_until(_all_committed(kafka_url, group, f"{ns}.job"), timeout=20)


@pytest.mark.kafka
async def test_a_dead_letter_write_that_fails_for_a_while_blocks_nothing_for_good(
    kafka_url: str, ns: str
) -> None:
    event_cls, router, got = job_type(ns), Router(), list[int]()
    group = f"{ns}-flaky-dlq"

    @router.subscribe(event_cls, group=group)
    async def handle(event: Job) -> None:
        if event.n == 1:
            raise PermanentError("poison")  # dead-lettered at once, not retried
        got.append(event.n)

    broker = KafkaBroker(kafka_url.removeprefix("kafka://"))
    real_add, failures = broker._dead.add, {"left": 6}  # more than one settle's retries

    async def flaky_add(*args: Any, **kwargs: Any) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise PublishError("the dead-letter topic is not available")
        await real_add(*args, **kwargs)

    broker._dead.add = flaky_add  # type: ignore[method-assign]
    bus = EventBus(broker, service=ns, routers=[router])
    async with bus:
        await bus.publish(event_cls(n=1), key="k")
        await bus.publish(event_cls(n=2), key="k")
        await wait_until(lambda: failures["left"] == 0, timeout=30)
        [record] = await _listed(bus, group, 1)
        await wait_until(lambda: 2 in got, timeout=20)
        await wait_until(_all_committed(kafka_url, group, f"{ns}.job"), timeout=20)
    assert record.error_type == "eventbus.errors.PermanentError"


def _collect(into: list[int]) -> Any:
    async def handler(event: Job) -> None:
        into.append(event.n)

    return handler


def _all_committed(url: str, group: str, topic: str) -> Any:
    async def check() -> bool:
        return await uncommitted(url, group, topic) == 0

    return check
