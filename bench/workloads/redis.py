"""Redis Streams: eventbus against raw redis-py (asyncio) and FastStream, same workload.

Every implementation publishes with ``XADD`` to a fresh stream named after ``channel`` and
consumes it in one consumer group with ``XREADGROUP ... COUNT 100`` (``PREFETCH``); each entry
is validated into :class:`bench.common.UserCreated`, passed to ``on_event`` and only then
acknowledged with ``XACK`` (at-least-once). Every publish returns once Redis has replied to its
``XADD``; batches are one pipelined round trip (``MULTI``-less pipeline). The server is the one
of ``scripts/services``: AOF with ``appendfsync always``, so every reply comes after an fsync.
Each trial deletes its keys when it stops. Every client keeps redis-py's default 5 s socket
timeout (eventbus applies it itself, see its adapter).

* ``raw``: one ``redis.asyncio.Redis`` client (its connection pool, hiredis parser). The
  consumer task reads a batch, runs ``decode`` → ``on_event`` for each entry, then
  acknowledges every entry of the batch whose handler returned with one ``XACK`` (all their
  ids in one command, as eventbus sends them). An entry whose handler raises stays pending
  (redelivery would need ``XAUTOCLAIM``). Batched publishes are one pipeline, as eventbus
  sends them. redis-py has no automatic pipelining, so concurrent publishers each send their
  own ``XADD`` on a pool connection of their own (100 of them use 100 connections); eventbus
  pipelines what concurrent publishers queue up while one round trip is in flight.
* ``eventbus``: ``EventBus(url, service="bench", routers=[router], ...)`` with the default
  middleware chain (dead-letter, retry) and ``batch_size=PREFETCH``, ``start_from="earliest"``.
  Events go to their class's ``event_topic`` (the public way to pick a destination), so
  ``start`` points ``UserCreated.event_topic`` at ``channel`` for the trial's process. On
  the wire the entry is a structured CloudEvent (id, source, type, time, correlation id,
  payload). Its consumer acks each entry
  after its handler but sends the acks of a read together, as one ``XACK`` before the next read;
  failures are settled by one Lua script each (requeue / delay / dead-letter, atomically).
  Concurrent publishes share one pipelined round trip on one connection.
* ``faststream``: ``RedisBroker`` with ``StreamSub(channel, group=..., consumer=...,
  max_records=PREFETCH)``, default ack policy (``REJECT_ON_ERROR``: ``XACK`` after the handler
  returns) and ``logger=None`` (its per-message access log is off; eventbus and raw log
  nothing per message either). FastStream has no stream batch publish
  (``publish_batch`` is ``RPUSH`` to a list), so the batch mode uses its documented
  ``pipeline=`` argument on a redis-py pipeline. It publishes the same JSON bytes, wrapped in
  its binary message format (correlation id, content type); the handler takes the message
  and validates its body with ``bench.common.decode``.

Where FastStream is weaker or different (0.7.8, read from its source):

* A handler failure *rejects*, and reject/nack do nothing on Redis Streams: the entry stays in
  the group's pending list and is never redelivered unless some subscriber runs with
  ``min_idle_time``, which turns that subscriber into an ``XAUTOCLAIM``-only reader (one entry
  per call) that no longer reads new entries (on Redis 8.4+, ``claim_min_idle_time`` —
  ``XREADGROUP ... CLAIM`` — reclaims in the normal read; the server here is 7.0). There is no
  retry, delay or dead-letter stream.
* A consumer that crashed leaves its pending entries behind for the same reason; eventbus
  reclaims them (``XAUTOCLAIM`` every ``claim_interval``) in the normal read loop.
* Its consumer group starts at ``$`` (only entries added after the group was created); the
  group is created in ``broker.start()``, before the harness publishes anything, so nothing is
  missed here.
* ``polling_interval`` (100 ms ``BLOCK``) and eventbus' ``block`` (2 s) only matter when the
  stream is empty: ``XREADGROUP`` returns as soon as an entry arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis

from bench.common import PREFETCH, EventBusWorkload, UserCreated, Workload, decode, encode
from eventbus.brokers.redis.entries import published
from eventbus.envelope import from_structured, to_structured
from eventbus.publishing import EnvelopeFactory

GROUP = "bench"
MAX_CONNECTIONS = 200
"""redis-py 8 pools allow 100 connections by default; 100 concurrent publishers plus the
consumer's need more (a pool per client, one connection per command in flight)."""
log = logging.getLogger("bench.redis")


async def _pending(url: str, stream: str) -> int:
    """Entries of ``stream`` the group ``GROUP`` has read and not acknowledged."""
    client = aioredis.Redis.from_url(url)
    try:
        summary: Any = await client.xpending(stream, GROUP)
        return int(summary["pending"])
    finally:
        await client.aclose()


async def _delete(url: str, *keys: str) -> None:
    """Remove a trial's keys, so the server does not accumulate benchmark streams."""
    client = aioredis.Redis.from_url(url)
    try:
        await client.delete(*keys)
    finally:
        await client.aclose()


class RawRedis(Workload):
    """redis-py asyncio as a competent engineer would write it; see the module documentation."""

    read: Callable[[bytes], UserCreated] = staticmethod(decode)
    """What turns an entry's ``data`` into the event."""

    async def start(self) -> None:
        self.redis = aioredis.Redis.from_url(self.url, max_connections=MAX_CONNECTIONS)
        self.stream = self.channel
        with contextlib.suppress(aioredis.ResponseError):  # BUSYGROUP: it exists already
            await self.redis.xgroup_create(self.stream, GROUP, "0", mkstream=True)
        self.running = True
        self.task = asyncio.ensure_future(self.consume())

    async def consume(self) -> None:
        redis, stream, on_event, read = self.redis, self.stream, self.on_event, self.read
        streams: dict[Any, Any] = {stream: ">"}
        while self.running:
            response: Any = await redis.xreadgroup(
                GROUP, "raw-1", streams, count=PREFETCH, block=1000
            )
            items = response.items() if isinstance(response, dict) else (response or [])
            for _, entries in items:
                handled = []
                for entry_id, fields in entries:
                    try:
                        on_event(read(fields[b"data"]))
                    except Exception:
                        log.exception("handler failed on %s; left pending", entry_id)
                        continue
                    handled.append(entry_id)
                if handled:  # one XACK for the whole batch, each id only after its handler
                    await redis.xack(stream, GROUP, *handled)

    async def publish(self, event: UserCreated) -> None:
        await self.redis.xadd(self.stream, {"data": encode(event)})

    async def publish_batch(self, events: Sequence[UserCreated]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for event in events:
            pipe.xadd(self.stream, {"data": encode(event)})
        await pipe.execute()

    async def stop(self) -> None:
        self.running = False
        self.task.cancel()
        await asyncio.wait([self.task], timeout=2.0)
        await self.redis.aclose()

    async def unsettled(self) -> int:
        return await _pending(self.url, self.stream)

    async def cleanup(self) -> None:
        await _delete(self.url, self.stream)


class RawWithEnvelope(RawRedis):
    """:class:`RawRedis` writing, for each event, the entry eventbus writes for it (its
    structured CloudEvent and content type, made by eventbus's own envelope factory and
    writer) and reading the payload back out of it with eventbus's reader: what that entry,
    about twice the bytes of the payload alone, costs the client and the server (which
    fsyncs every write). Not one of the benchmark's implementations (:data:`VARIANTS`): run
    on its own with ``bench.trial redis raw-envelope MODE`` (``docs/benchmarks.md``)."""

    envelopes = EnvelopeFactory("bench", max_message_bytes=1_000_000)

    @staticmethod
    def read(data: bytes) -> UserCreated:
        return decode(from_structured(data).data)

    def entry(self, event: UserCreated) -> dict[Any, Any]:
        return published(to_structured(self.envelopes(event)))

    async def publish(self, event: UserCreated) -> None:
        await self.redis.xadd(self.stream, self.entry(event))

    async def publish_batch(self, events: Sequence[UserCreated]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for event in events:
            pipe.xadd(self.stream, self.entry(event))
        await pipe.execute()


class EventBusRedis(EventBusWorkload):
    """eventbus through its public API only; see the module documentation."""

    prefix = "bench:"

    def broker_options(self) -> dict[str, Any]:
        return {"prefix": self.prefix, "batch_size": PREFETCH, "start_from": "earliest"}

    async def unsettled(self) -> int:
        return await _pending(self.url, f"{self.prefix}{self.channel}")

    async def cleanup(self) -> None:
        stream = f"{self.prefix}{self.channel}"
        await _delete(self.url, stream, f"{stream}~retry~{GROUP}")


class FastStreamRedis(Workload):
    """FastStream's Redis broker, as close to the same semantics as it allows."""

    async def start(self) -> None:
        from faststream.redis import RedisBroker, RedisStreamMessage, StreamSub

        # logger=None turns its logging off (EmptyLoggerStorage); its type hint omits None.
        self.broker = broker = RedisBroker(
            self.url,
            logger=None,  # type: ignore[arg-type]
            max_connections=MAX_CONNECTIONS,
        )
        on_event = self.on_event
        sub = StreamSub(self.channel, group=GROUP, consumer="faststream-1", max_records=PREFETCH)

        @broker.subscriber(stream=sub)
        async def handle(message: RedisStreamMessage) -> None:
            on_event(decode(message.body))

        await broker.start()
        self.client: aioredis.Redis = await broker.connect()

    async def publish(self, event: UserCreated) -> None:
        await self.broker.publish(encode(event), stream=self.channel)

    async def publish_batch(self, events: Sequence[UserCreated]) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            for event in events:
                await self.broker.publish(encode(event), stream=self.channel, pipeline=pipe)
            await pipe.execute()

    async def stop(self) -> None:
        await self.broker.stop()

    async def unsettled(self) -> int:
        return await _pending(self.url, self.channel)

    async def cleanup(self) -> None:
        await _delete(self.url, self.channel)


IMPLEMENTATIONS: dict[str, type[Workload]] = {
    "eventbus": EventBusRedis,
    "raw": RawRedis,
    "faststream": FastStreamRedis,
}
VARIANTS: dict[str, type[Workload]] = {"raw-envelope": RawWithEnvelope}
"""Implementations a trial runs by name (``bench.trial``) that the benchmark leaves out."""
