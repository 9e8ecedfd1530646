"""The baseline: an outbox relay as a competent engineer writes it by hand, same guarantees.

It reads eventbus's outbox table (the rows eventbus staged) with SQLAlchemy Core on the same
engine and driver, and publishes with the raw client, so that the comparison is about what
``OutboxRelay`` adds. One round is one transaction::

    SELECT position, aggregatetype, aggregateid, payload, headers FROM outbox
     WHERE state = 'pending' ORDER BY position LIMIT 200 FOR UPDATE SKIP LOCKED;
    -- publish the rows, in that order, and wait for the broker's answer
    DELETE FROM outbox WHERE position IN (...);
    COMMIT;

The row locks are the lease: a relay that dies before ``COMMIT`` leaves the rows to the next
one (published again: at least once, as eventbus). With one relay the rows go in position
order, which the staging's key locks make commit order per key (several of these relays would
not keep that order; the baseline is measured with one). What it does not have: leases that
survive a transaction (it holds one open for the whole publish), the check for rows of the same
key held by another relay, retries with backoff and dead rows, ``retention``.

Publishing, with the topology of :mod:`bench.workloads` and eventbus:

* Redis: one ``redis.asyncio`` pipeline (no ``MULTI``) of ``XADD bench:<destination>`` per
  batch, fields ``data`` = the payload and the staged CloudEvents headers, one field each;
* Kafka: ``AIOKafkaProducer`` with :data:`bench.workloads.kafka.PRODUCER` (``acks="all"``),
  one ``send`` per row (value = payload, key = the partition key, headers = the staged
  CloudEvents headers, as eventbus sends them), then every future awaited.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
import sqlalchemy as sa
from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.outbox.common import REDIS_PREFIX
from bench.workloads.kafka import PRODUCER, servers


class RedisPublisher:
    def __init__(self, url: str) -> None:
        self.redis = aioredis.Redis.from_url(url)

    async def start(self, channel: str) -> None:
        await self.redis.xadd(f"{REDIS_PREFIX}{channel}", {"data": b"warm-up"})

    async def publish(self, rows: Sequence[Any]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for row in rows:
            fields: dict[Any, Any] = json.loads(row.headers)
            fields["data"] = row.payload
            pipe.xadd(f"{REDIS_PREFIX}{row.aggregatetype}", fields)
        await pipe.execute()

    async def close(self) -> None:
        await self.redis.aclose()


class KafkaPublisher:
    def __init__(self, url: str) -> None:
        self.producer = AIOKafkaProducer(bootstrap_servers=servers(url), **PRODUCER)

    async def start(self, channel: str) -> None:
        await self.producer.start()
        await (await self.producer.send(channel, b"warm-up"))

    async def publish(self, rows: Sequence[Any]) -> None:
        send = self.producer.send
        futures = []
        for row in rows:
            headers = [(k, v.encode()) for k, v in json.loads(row.headers).items()]
            key = row.aggregateid.encode() if row.aggregateid is not None else None
            futures.append(await send(row.aggregatetype, row.payload, key=key, headers=headers))
        await asyncio.gather(*futures)

    async def close(self) -> None:
        await self.producer.stop()


PUBLISHERS: dict[str, type[RedisPublisher] | type[KafkaPublisher]] = {
    "redis": RedisPublisher,
    "kafka": KafkaPublisher,
}


class HandWrittenRelay:
    """See the module documentation; ``run_once`` has the meaning of ``OutboxRelay``'s."""

    def __init__(
        self,
        engine: AsyncEngine,
        table: sa.Table,
        publisher: RedisPublisher | KafkaPublisher,
        batch_size: int,
    ) -> None:
        self.engine, self.publisher, self.batch_size = engine, publisher, batch_size
        t = table
        self.claim = (
            sa.select(t.c.position, t.c.aggregatetype, t.c.aggregateid, t.c.payload, t.c.headers)
            .where(t.c.state == "pending")
            .order_by(t.c.position)
            .limit(batch_size)
            .with_for_update(skip_locked=True)
        )
        self.delete = sa.delete(t).where(
            t.c.position.in_(sa.bindparam("positions", expanding=True))
        )

    async def run_once(self) -> int:
        """Publish every pending row; returns how many."""
        total = 0
        while True:
            async with self.engine.begin() as connection:
                rows = (await connection.execute(self.claim)).all()
                if rows:
                    await self.publisher.publish(rows)
                    positions = [row.position for row in rows]
                    await connection.execute(self.delete, {"positions": positions})
            total += len(rows)
            if len(rows) < self.batch_size:
                return total
