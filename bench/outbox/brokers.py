"""The broker side of a relay trial: get the channel ready, count what arrived, clean up.

Every trial publishes to a fresh channel: the Redis stream ``bench:<channel>``, the Kafka
topic ``<channel>`` (created by broker auto-creation before the relays start, as
:mod:`bench.workloads.kafka` does), or the RabbitMQ exchange ``<channel>`` with one durable
queue bound for the destination (eventbus publishes with ``mandatory``: something must be
bound). The memory broker needs nothing: each relay process has its own, with no subscriber.
"""

from __future__ import annotations

import contextlib

import aio_pika
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # type: ignore[import-untyped]

from bench.common import server_url
from bench.outbox.common import REDIS_PREFIX
from bench.workloads.kafka import PRODUCER, servers


async def prepare(broker: str, channel: str) -> None:
    if broker == "rabbitmq":
        connection = await aio_pika.connect(server_url("rabbitmq"))
        async with connection:
            ch = await connection.channel()
            exchange = await ch.declare_exchange(channel, aio_pika.ExchangeType.TOPIC, durable=True)
            queue = await ch.declare_queue(channel, durable=True)
            await queue.bind(exchange, routing_key=channel)
    elif broker == "kafka":
        producer = AIOKafkaProducer(bootstrap_servers=servers(server_url("kafka")), **PRODUCER)
        await producer.start()
        try:
            await producer.partitions_for(channel)  # auto-creates the topic
        finally:
            await producer.stop()


async def arrived(broker: str, channel: str, expected: int) -> int | None:
    """How many messages the channel holds (None for the memory broker: nothing to count;
    on Kafka, reading stops at ``expected``)."""
    if broker == "redis":
        client = aioredis.Redis.from_url(server_url("redis"))
        async with client:
            return int(await client.xlen(f"{REDIS_PREFIX}{channel}"))
    if broker == "rabbitmq":
        connection = await aio_pika.connect(server_url("rabbitmq"))
        async with connection:
            queue = await (await connection.channel()).declare_queue(channel, passive=True)
            count = queue.declaration_result.message_count
            return int(count) if count is not None else None
    if broker == "kafka":
        return await _kafka_records(channel, expected)
    return None


async def _kafka_records(topic: str, expected: int) -> int:
    """Read the topic from the start (tansu's end offsets trail the last batch)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=servers(server_url("kafka")), enable_auto_commit=False,
        fetch_max_wait_ms=10, max_partition_fetch_bytes=4 * 1024 * 1024,
    )  # fmt: skip
    await consumer.start()
    try:
        await consumer.topics()  # a metadata refresh
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        count, empty = 0, 0
        while count < expected and empty < 5:  # five empty fetches in a row: that is all
            batch = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            empty = 0 if batch else empty + 1
            count += sum(len(records) for records in batch.values())
        return count
    finally:
        await consumer.stop()


async def cleanup(broker: str, channel: str) -> None:
    """Remove what the trial left on the server (Kafka topics stay, as in bench.run)."""
    with contextlib.suppress(Exception):
        if broker == "redis":
            client = aioredis.Redis.from_url(server_url("redis"))
            async with client:
                await client.delete(f"{REDIS_PREFIX}{channel}")
        elif broker == "rabbitmq":
            connection = await aio_pika.connect(server_url("rabbitmq"))
            async with connection:
                ch = await connection.channel()
                await ch.queue_delete(channel)
                await ch.exchange_delete(channel)
