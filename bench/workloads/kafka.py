"""Kafka (tansu here): eventbus against the raw aiokafka client and FastStream.

All three publish ``UserCreated`` (≈ 200 bytes of JSON) with ``acks="all"`` (each awaited
publish returns once the broker has the record), consume the fresh 4-partition topic
``channel`` in one consumer group named after it, validate each record into ``UserCreated``,
call ``on_event`` and only then commit.

Shared consumer settings (:data:`CONSUMER`):

* the group-join timings of ``tests/brokers/test_kafka.py``: ``session_timeout_ms=1000``,
  ``heartbeat_interval_ms=300`` (tansu holds a JoinGroup for ``session_timeout_ms / 2``);
* ``auto_offset_reset="earliest"``, so a consumer that joins late misses nothing (eventbus
  sets it itself);
* a fetch batch of :data:`~bench.common.PREFETCH` records (``max_poll_records``, which is
  also the ``max_records`` of eventbus's ``getmany``); the fetch byte limits are aiokafka's
  defaults for all three;
* ``fetch_max_wait_ms=10``, for tansu: a fetch that finds no data is answered about
  ``fetch_max_wait_ms / 2`` later even if records arrive meanwhile (Apache Kafka answers as
  soon as they do), so with aiokafka's default of 500 ms every closed-loop latency is
  ≈ 250 ms, whoever the client is. At 10 ms it is a few ms, at the price of idle fetches
  (≈ 200/s) that dominate the CPU per event of the ``latency`` mode for all three.

Shared producer settings (:data:`PRODUCER`): eventbus's defaults, ``acks="all"`` and
``max_request_size`` = its 1 MB payload limit plus 64 KiB (which changes nothing for these
events); aiokafka's defaults otherwise (``linger_ms=0``, 16 KiB batches): records published
while a produce request is in flight accumulate into the next one.

**raw**: what one would write with aiokafka for the same guarantees, and no more.
``publish`` awaits the ``send()`` future, ``publish_batch`` hands every record to ``send()``
and then awaits all the futures. The consumer loop is ``getmany(timeout_ms=1000,
max_records=PREFETCH)`` (the call eventbus makes), ``model_validate_json`` per record, then
one ``commit()`` of the batch's next offsets per partition: the aiokafka manual-commit
pattern, one commit per fetched batch, never one per record. That commit is awaited before
the next ``getmany`` (aiokafka keeps fetching in the background meanwhile), so the raw loop
pays one commit round trip per batch; eventbus commits from a background task while the
handlers go on, which is more machinery than a hand-written loop would have, and its cost is
part of what eventbus is measured with. Unlike eventbus, raw has no CloudEvents headers, no
retry topics in its subscription, no per-message settle and no middleware: the difference is
what the comparison shows.

**Topology**: every implementation's topic is created before it starts, with
:data:`PARTITIONS` partitions (checked), so none depends on the broker's auto-creation
default. After each trial the records past the group's committed offsets are counted
(:func:`uncommitted`): it must be 0 for every implementation.

**eventbus**: ``EventBus("kafka://…", consumer_options=CONSUMER)`` with the default middleware
chain, one ``@router.subscribe(UserCreated, group=channel)``. The destination of an event is
its class's ``event_topic``; ``bench.common.UserCreated`` has none (so "UserCreated"), and the
harness hands us instances of it, so ``start`` sets ``UserCreated.event_topic = channel`` for
this trial's process (restored in ``stop``): no per-event conversion into a subclass, which
would charge eventbus for a benchmark artefact (``model_construct`` is ≈ 8 µs).

**faststream** (0.7.8, ``faststream.kafka.KafkaBroker``), set up as close to the same
semantics as it allows. Where its *defaults* are weaker, and what we set instead:

* ``acks``: FastStream leaves aiokafka's default, ``acks=1`` (the partition leader only);
  we pass ``acks="all"``.
* commit: the default ``AckPolicy.ACK_FIRST`` turns on ``enable_auto_commit`` — offsets are
  committed every 5 s by a background task for whatever was *fetched*, handled or not, so a
  crash loses messages. We pass ``ack_policy=AckPolicy.ACK`` (commit after the handler
  returns). FastStream then runs ``getone()`` and awaits one ``commit()`` round trip per
  message; it has no commit-per-fetch-batch mode for a per-message handler (``batch=True``
  changes the handler to take a list, and acks the whole list at once).
* fetch batch: a per-message subscriber uses ``getone()``, which ``max_poll_records`` does
  not bound; it is passed anyway.
* topic: FastStream creates declared topics itself with 1 partition; the topic exists with
  4 by then, and we declare ``Topic(channel, num_partitions=4)`` as well.
* decoding: idiomatic FastStream — the handler takes ``event: UserCreated``; FastStream
  ``json.loads`` the body and validates the dict into the model (``fast_depends``), rather than
  ``model_validate_json`` on the bytes. Publishing passes the model; FastStream serializes it
  with pydantic and adds a ``content-type`` header.
* batches: ``broker.publish_batch`` puts every message into one aiokafka batch on one
  partition and refuses 100 of these events (``BatchBufferOverflowException`` at the 56th:
  over the 16 KiB default ``max_batch_size``), so
  ``publish_batch`` here uses ``publish(..., no_confirm=True)`` futures awaited together,
  the same pipelining as raw and eventbus.
* logging: FastStream logs two lines per message by default; ``logger=None`` turns that off
  (eventbus logs nothing per message either).
* ``metadata_max_age_ms`` (which the tests lower to find new topics sooner) is left alone
  here: the topic exists before anyone subscribes, and FastStream applies it broker-wide,
  also to its admin client, which then asks for the metadata of *every* topic on the broker
  that often (thousands on a long-running tansu).
* latency on tansu: ``getone()`` plus an awaited commit per message means FastStream asks for
  the next records only after the handled one is committed, by when the closed loop has
  published the next event, so tansu answers that fetch at once instead of holding it (see
  ``fetch_max_wait_ms`` above). Raw aiokafka written the same way gets the same few ms; on
  Apache Kafka, which answers a waiting fetch as soon as data arrives, it should vanish (not
  measured here).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
from aiokafka.errors import KafkaError  # type: ignore[import-untyped]

from bench.common import PREFETCH, EventBusWorkload, UserCreated, Workload, decode, encode
from eventbus.brokers.kafka.records import record_headers
from eventbus.publishing import EnvelopeFactory

CONSUMER: dict[str, Any] = {
    "session_timeout_ms": 1000,
    "heartbeat_interval_ms": 300,
    "max_poll_records": PREFETCH,
    "fetch_max_wait_ms": 10,
}
"""The consumer settings all three share (group timings as in tests/brokers/test_kafka.py)."""
PRODUCER: dict[str, Any] = {"acks": "all", "max_request_size": 1_000_000 + 64 * 1024}
"""eventbus's producer defaults (``KafkaBroker().producer_options``), given to raw as well."""


PARTITIONS = 4
"""Every implementation's topic: created with this many partitions before it starts."""


def servers(url: str) -> str:
    return url.split("://", 1)[1]


async def create_topic(url: str, topic: str) -> None:
    """Create ``topic`` with :data:`PARTITIONS` partitions, so that no implementation depends
    on the broker's auto-creation default; refuses a topic that exists with another count."""
    admin = AIOKafkaAdminClient(bootstrap_servers=servers(url))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=servers(url))
    await producer.start()
    try:
        count = len(await producer.partitions_for(topic))
    finally:
        await producer.stop()
    if count != PARTITIONS:
        raise SystemExit(f"topic {topic} has {count} partitions, not {PARTITIONS}")


async def uncommitted(url: str, topic: str, group: str) -> int:
    """Records of ``topic`` past ``group``'s committed offsets, over all its partitions.

    Counted by reading them: tansu's end offsets (``ListOffsets``) can lag behind what it
    has stored, so a reader seeks each partition to the committed offset and counts what it
    gets until a fetch comes back empty."""
    reader = AIOKafkaConsumer(
        bootstrap_servers=servers(url), group_id=group, enable_auto_commit=False
    )
    await reader.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        reader.assign(tps)
        for tp in tps:
            reader.seek(tp, await reader.committed(tp) or 0)
        left = 0
        while batch := await reader.getmany(timeout_ms=1000):
            left += sum(len(records) for records in batch.values())
        return left
    finally:
        await reader.stop()


class Raw(Workload):
    async def start(self) -> None:
        await create_topic(self.url, self.channel)
        self.producer = AIOKafkaProducer(bootstrap_servers=servers(self.url), **PRODUCER)
        await self.producer.start()
        self.consumer = AIOKafkaConsumer(
            self.channel,
            bootstrap_servers=servers(self.url),
            group_id=self.channel,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **CONSUMER,
        )
        await self.consumer.start()
        self.task = asyncio.ensure_future(self.consume())

    async def consume(self) -> None:
        consumer, on_event = self.consumer, self.on_event
        while True:
            batch = await consumer.getmany(timeout_ms=1000, max_records=PREFETCH)
            if not batch:
                continue
            for records in batch.values():
                for record in records:
                    on_event(decode(record.value))
            await consumer.commit({tp: records[-1].offset + 1 for tp, records in batch.items()})

    async def publish(self, event: UserCreated) -> None:
        await (await self.producer.send(self.channel, encode(event)))

    async def publish_batch(self, events: Sequence[UserCreated]) -> None:
        send, topic = self.producer.send, self.channel
        await asyncio.gather(*[await send(topic, encode(event)) for event in events])

    async def stop(self) -> None:
        self.task.cancel()  # in getmany (nothing taken) or in a commit (everything handled)
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        with contextlib.suppress(KafkaError):
            await self.consumer.commit()  # what was handled; lets a cancelled commit finish
        await self.consumer.stop()
        await self.producer.stop()

    async def unsettled(self) -> int:
        return await uncommitted(self.url, self.channel, self.channel)


class RawWithHeaders(Raw):
    """:class:`Raw` carrying the CloudEvents headers eventbus writes for the same event, made
    by eventbus's own record writer from an envelope per event (whose payload is the value):
    what those headers cost the driver, on the producer and the consumer. Not one of the
    benchmark's implementations (:data:`VARIANTS`): counted on its own with
    ``bench.trial kafka raw-headers MODE`` under callgrind (``docs/benchmarks.md``)."""

    async def start(self) -> None:
        self.envelopes = EnvelopeFactory("bench", max_message_bytes=1_000_000)
        await super().start()

    async def publish(self, event: UserCreated) -> None:
        envelope = self.envelopes(event)
        headers = record_headers(envelope)
        await (await self.producer.send(self.channel, envelope.data, headers=headers))

    async def publish_batch(self, events: Sequence[UserCreated]) -> None:
        send, topic, envelopes = self.producer.send, self.channel, map(self.envelopes, events)
        futures = [await send(topic, e.data, headers=record_headers(e)) for e in envelopes]
        await asyncio.gather(*futures)


class EventBusKafka(EventBusWorkload):
    def group(self) -> str:
        return self.channel

    async def start(self) -> None:
        await create_topic(self.url, self.channel)
        await super().start()

    async def unsettled(self) -> int:
        return await uncommitted(self.url, self.channel, self.channel)

    def broker_options(self) -> dict[str, Any]:
        return {"consumer_options": CONSUMER}


class FastStreamKafka(Workload):
    async def start(self) -> None:
        from faststream.kafka import KafkaBroker, Topic
        from faststream.middlewares import AckPolicy

        await create_topic(self.url, self.channel)
        self.broker = KafkaBroker(servers(self.url), acks="all", logger=None)
        on_event = self.on_event

        @self.broker.subscriber(
            Topic(self.channel, num_partitions=4),
            group_id=self.channel,
            auto_offset_reset="earliest",
            ack_policy=AckPolicy.ACK,
            session_timeout_ms=CONSUMER["session_timeout_ms"],
            heartbeat_interval_ms=CONSUMER["heartbeat_interval_ms"],
            fetch_max_wait_ms=CONSUMER["fetch_max_wait_ms"],
            max_poll_records=PREFETCH,
        )
        async def handle(event: UserCreated) -> None:
            on_event(event)

        await self.broker.start()

    async def publish(self, event: UserCreated) -> None:
        await self.broker.publish(event, topic=self.channel)

    async def publish_batch(self, events: Sequence[UserCreated]) -> None:
        publish, topic = self.broker.publish, self.channel
        await asyncio.gather(*[await publish(e, topic=topic, no_confirm=True) for e in events])

    async def stop(self) -> None:
        await self.broker.stop()

    async def unsettled(self) -> int:
        return await uncommitted(self.url, self.channel, self.channel)


IMPLEMENTATIONS: dict[str, type[Workload]] = {
    "eventbus": EventBusKafka,
    "raw": Raw,
    "faststream": FastStreamKafka,
}
VARIANTS: dict[str, type[Workload]] = {"raw-headers": RawWithHeaders}
"""Implementations a trial runs by name (``bench.trial``) that the benchmark leaves out."""
