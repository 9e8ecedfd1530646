"""The Kafka adapter (aiokafka): ``kafka://host:port[,host:port]``.

**Wire format.** CloudEvents binary content mode: ``ce_*`` headers and ``content-type``, the
payload as the value, ``partitionkey`` as the record key (so one key stays on one partition
and in order). Structured mode and the other header prefixes are accepted on input.

**Topology.** The destination is the topic: one topic per event type by default, or several
types on one topic with ``Event.event_topic`` (the bus filters by type). Each subscription is
a consumer in its consumer group that commits *after* handling (:mod:`.consumer`).

**Retries without blocking the partition** (the "retry topics" of Spring Kafka). ``nack`` and
``retry_later(delay)`` republish a copy (same key, value and ``ce_*`` headers, plus the
carried ``eventbus-*`` headers of :mod:`eventbus.brokers._wire`) to a retry topic of the
subscription's own group, ``__eventbus.retry.{group}.{topic}.{tier}ms``, then commit the
original. ``retry_tiers`` are the tiers; a delay goes to the largest tier not above it (tier 0
always exists). The retry topics are read by a second consumer, in a Kafka group of their own
(``__eventbus.retry.{group}.{topic}``), so they stay out of the main topic's fetches.
``nack`` waits ``nack_delay`` so a cancelled handler is not a tight loop.

**Dead letters** go to ``__eventbus.dlq.{group}`` (:mod:`.deadletters`).

**Options.** ``producer_options`` go to ``AIOKafkaProducer``, ``consumer_options`` to
``AIOKafkaConsumer`` (https://aiokafka.readthedocs.io/en/stable/api.html; its
``max_poll_records`` is also how many records one fetch hands to the bus, 50 if unset); the
security options (``security_protocol``, ``ssl_context``, ``sasl_*``) and ``client_id`` go to
both. Concurrent ``publish`` calls share produce requests: records handed to the producer while
a request is in flight go out together in the next one, and each call still returns only once
Kafka has acknowledged its record. ``publish_batch``, and the ``publish`` calls made while
others are waiting, write their records into one record batch per partition (aiokafka's batch
API, :mod:`.batches`), placed as the producer's partitioner would place them. Internal topics
are created by the broker's auto-creation when first touched (at subscribe); a cluster with
``auto.create.topics.enable=false`` needs them created beforehand. See ``docs/brokers/kafka.md``.

The package: this module (the broker: options, connect and close, publish, subscribe),
:mod:`.topology` (topic names and configs), :mod:`.driver` (aiokafka's errors and headers),
:mod:`.records`, :mod:`.batches` and :mod:`.partitioner` (publishing), :mod:`.consumer`,
:mod:`.reader` and :mod:`.delivery` (consuming), :mod:`.deadletters` (the store).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]
from aiokafka.protocol.admin import DeleteGroupsRequest  # type: ignore[import-untyped]

from eventbus.brokers._wire import check_max_message_bytes, hosts_of
from eventbus.brokers.kafka.batches import PublishQueue, RecordBatcher, unawaited
from eventbus.brokers.kafka.consumer import KafkaConsumer
from eventbus.brokers.kafka.deadletters import KafkaDeadLetters
from eventbus.brokers.kafka.delivery import KafkaDelivery
from eventbus.brokers.kafka.delivery import _Partition as _Partition
from eventbus.brokers.kafka.driver import ERRORS, Headers, encode_headers, reraise
from eventbus.brokers.kafka.records import record_of
from eventbus.brokers.kafka.topology import (
    DEFAULT_MAX_MESSAGE_BYTES,
    Settings,
    check_topic,
    dlq_topic,
    kafka_group,
    retry_group,
    retry_topic,
)
from eventbus.clock import SystemClock
from eventbus.envelope import Envelope
from eventbus.errors import BrokerUnavailable, BusNotStarted, ConfigurationError
from eventbus.redact import redact_options, redact_url
from eventbus.types import Capabilities, SubscriptionView, WireChannel, WireFormat

__all__ = ["KafkaBroker", "KafkaConsumer", "KafkaDeadLetters", "KafkaDelivery", "from_url"]


class KafkaBroker:
    """Kafka adapter; see the module documentation for topology, retries and dead letters.

    ``retry_tiers`` (seconds) are the delays that get a retry topic; ``nack_delay`` is how
    long a nacked message waits; ``retry_poll_interval`` how long the retry topics' consumer
    waits on the broker per fetch, and how often the main fetch loop takes what it fetched;
    ``join_timeout`` bounds how long ``subscribe`` waits for the groups' joins;
    ``revoke_timeout`` how long a rebalance waits for in-flight work. Kafka cannot know of a
    crash, so a message redelivered after one keeps the attempt it had.
    """

    system = "kafka"
    """The OpenTelemetry ``messaging.system`` of this adapter."""
    capabilities = Capabilities(
        persistent=True,
        consumer_groups=True,
        ordered_per_key=True,
        delayed_redelivery=True,
        dead_letters=True,
        pattern_subscriptions=True,
        uncounted_release=True,
    )
    clock = SystemClock()

    def __init__(
        self,
        bootstrap_servers: str | Sequence[str],
        *,
        producer_options: Mapping[str, Any] | None = None,
        consumer_options: Mapping[str, Any] | None = None,
        retry_tiers: Sequence[float] = (1.0, 10.0, 60.0, 600.0, 3600.0),
        nack_delay: float = 1.0,
        retry_poll_interval: float = 0.25,
        join_timeout: float = 60.0,
        revoke_timeout: float = 30.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        **common: Any,
    ) -> None:
        self.max_message_bytes = check_max_message_bytes(max_message_bytes)
        self.settings = Settings.build(
            bootstrap_servers,
            producer_options=producer_options,
            consumer_options=consumer_options,
            retry_tiers=retry_tiers,
            nack_delay=nack_delay,
            retry_poll_interval=retry_poll_interval,
            join_timeout=join_timeout,
            revoke_timeout=revoke_timeout,
            max_message_bytes=self.max_message_bytes,
            common=common,
        )
        self._producer: Any = None
        self._checked: set[str] = set()  # topic names already found valid
        self._connected = 0
        self._consumers: set[KafkaConsumer] = set()
        self._dead = KafkaDeadLetters(self.settings, self)
        self._batcher = RecordBatcher(self.settings.producer_config())
        self._queue = PublishQueue(self._batcher)

    @property
    def bootstrap_servers(self) -> list[str]:
        return self.settings.bootstrap_servers

    @property
    def producer_options(self) -> Mapping[str, Any]:
        """What the producer is given: ``acks="all"`` and ``max_request_size`` unless set."""
        return self.settings.producer_options

    @property
    def max_request_size(self) -> int:
        return self.settings.max_request_size

    @property
    def max_records(self) -> int | None:
        """Records per fetch handed to the bus (``consumer_options["max_poll_records"]``)."""
        return self.settings.max_records

    # ---------------------------------------------------------------- lifecycle
    async def connect(self) -> None:
        self._connected += 1
        if self._producer is not None:
            return
        producer = AIOKafkaProducer(**self.settings.producer_config())
        try:
            with ERRORS("connect"):
                await producer.start()
        except BaseException:
            self._connected -= 1
            await producer.stop()
            raise
        self._producer = producer

    async def close(self) -> None:
        if self._connected:
            self._connected -= 1
        if self._connected or self._producer is None:
            return
        for consumer in list(self._consumers):
            await consumer.close()
        await self._dead.close()
        await self._queue.flush()
        producer, self._producer = self._producer, None
        with ERRORS("publish the events still pending on close"):
            await producer.stop()  # flushes what is still batched

    @property
    def dead_letters(self) -> KafkaDeadLetters:
        return self._dead

    def wire_format(self) -> WireFormat:
        """Binary mode: ``ce_*`` headers and ``content-type``; the partition key as record key."""
        hosts = tuple(h for s in self.bootstrap_servers for h in hosts_of(f"//{s}", 9092))
        return WireFormat("kafka", hosts, header_prefix="ce_", content_type_header=True)

    def channel(self, destination: str) -> WireChannel:
        return WireChannel(
            destination, bindings={"kafka": {"topic": destination, "bindingVersion": "0.5.0"}}
        )

    def receive_bindings(self, subscription: SubscriptionView) -> dict[str, Any]:
        group = kafka_group(subscription.group or "", subscription.topic, subscription.is_pattern)
        group_id = {"type": "string", "enum": [group]}
        return {"kafka": {"groupId": group_id, "bindingVersion": "0.5.0"}}

    def internal_channels(self, subscription: SubscriptionView) -> list[WireChannel]:
        group = subscription.group or subscription.name
        retries = [
            WireChannel(
                topic,
                "retry",
                f"Redeliveries of group {group!r} waiting {tier:g}s (retry tier).",
                bindings={"kafka": {"topic": topic, "bindingVersion": "0.5.0"}},
            )
            for tier in self.settings.retry_tiers
            for topic in [retry_topic(group, subscription.topic, tier)]
        ]
        dlq = dlq_topic(group)
        dead = WireChannel(
            dlq,
            "dead-letter",
            f"Dead letters of group {group!r}: the original record, provenance in "
            "eventbus-dlq-* headers.",
            bindings={"kafka": {"topic": dlq, "bindingVersion": "0.5.0"}},
        )
        return [*retries, dead]

    def pending(self) -> None:
        """Not known exactly on a network broker (``bus.drain()`` waits for idle handlers)."""
        return

    async def lag(self, subscription: SubscriptionView) -> int | None:
        """Records of the subscription's topics (its topic or the topics its pattern matches,
        and its retry topics) past its group's committed offsets: not yet handled, or handled
        and not yet committed. None when it has no consumer in this process."""
        for consumer in self._consumers:
            sub = consumer.sub
            if (sub.name, sub.group, sub.topic) == (
                subscription.name,
                subscription.group,
                subscription.topic,
            ):
                return await consumer.lag()
        return None

    def __repr__(self) -> str:
        options = redact_options(self.settings.common)
        shown = "".join(f", {name}={value!r}" for name, value in sorted(options.items()))
        return f"KafkaBroker({self.bootstrap_servers!r}{shown})"

    # ---------------------------------------------------------------- publishing
    def _require_producer(self) -> Any:
        if self._producer is None:
            raise BusNotStarted("the Kafka broker is not connected; start the bus first")
        return self._producer

    def _topic(self, topic: str) -> str:
        if topic not in self._checked:
            check_topic(topic)
            if len(self._checked) > 10_000:  # bounded, in case names are made up per event
                self._checked.clear()
            self._checked.add(topic)
        return topic

    async def send(
        self, topic: str, value: bytes | None, key: bytes | None, headers: Headers
    ) -> asyncio.Future[Any]:
        """Hand one record to the producer; the returned future resolves once Kafka has it.

        Records handed over while a produce request is in flight accumulate into the next
        request for their partition, so concurrent publishes share round trips.
        """
        producer = self._require_producer()
        checked = self._topic(topic)
        try:
            future: asyncio.Future[Any] = await producer.send(
                checked, value, key=key, headers=headers
            )
        except Exception as exc:
            reraise(exc, f"publish to {topic!r}")
        return future

    async def wait(self, futures: Sequence[asyncio.Future[Any]], topic: str) -> None:
        """Wait for records handed over with :meth:`send` (``topic`` names them in errors)."""
        try:
            await asyncio.gather(*futures)
        except Exception as exc:
            reraise(exc, f"publish to {topic!r}")

    def publish(self, destination: str, envelope: Envelope) -> Awaitable[None]:
        """Awaited, returns once Kafka has the record (``acks="all"`` unless configured
        otherwise).

        Calls made in one turn of the event loop share record batches
        (:class:`~.batches.PublishQueue`)."""
        record = (self._topic(destination), *record_of(envelope))
        return self._queue.publish(self._require_producer(), record)

    async def publish_batch(self, messages: Sequence[tuple[str, Envelope]]) -> None:
        """One record batch per partition (:mod:`.batches`), every batch handed to the
        producer before any acknowledgement is awaited."""
        if not messages:
            return
        producer = self._require_producer()
        records = [(self._topic(topic), *record_of(envelope)) for topic, envelope in messages]
        first = messages[0][0]
        sent: list[tuple[asyncio.Future[Any], list[int]]] = []
        try:
            await self._batcher.send(producer, records, sent)
        except Exception as exc:
            unawaited([future for future, _ in sent])
            reraise(exc, f"publish to {first!r}")
        await self.wait([future for future, _ in sent], first)

    async def send_raw(
        self,
        destination: str,
        body: bytes,
        headers: Mapping[str, Any] | None = None,
        key: str | bytes | None = None,
    ) -> None:
        """Put bytes on a topic as a foreign producer would, without any encoding."""
        raw_key = key.encode() if isinstance(key, str) else key
        future = await self.send(destination, body, raw_key, encode_headers(headers or {}))
        await self.wait([future], destination)

    async def touch(self, topics: Sequence[str]) -> None:
        """Make sure the topics exist (broker auto-creation) before a consumer subscribes."""
        producer = self._require_producer()
        with ERRORS(f"look up topics {list(topics)}"):
            for topic in topics:
                await producer.partitions_for(topic)

    # ---------------------------------------------------------------- consuming
    async def subscribe(self, subscription: SubscriptionView) -> KafkaConsumer:
        if subscription.group is None:
            raise ValueError("subscription has no group; include it into a bus first")
        self._require_producer()
        consumer = KafkaConsumer(
            self.settings, self, self._dead, subscription, on_close=self._consumers.discard
        )
        await consumer.start()
        self._consumers.add(consumer)
        return consumer

    async def remove_group(self, subscription: SubscriptionView) -> None:
        """Delete the subscription's Kafka groups (``DeleteGroups``: the main one and that of
        its retry topics) and its retry topics; its dead-letter topic is kept."""
        if subscription.group is None:
            raise ValueError("subscription has no group; include it into a bus first")
        group, topic = subscription.group, subscription.topic
        group_ids = [kafka_group(group, topic, subscription.is_pattern), retry_group(group, topic)]
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.settings.bootstrap_servers, **self.settings.common
        )
        with ERRORS(f"remove consumer group {group_ids[0]!r}"):
            await admin.start()
            try:
                for group_id in group_ids:  # each may have a coordinator of its own
                    node = await admin.find_coordinator(group_id)
                    request = DeleteGroupsRequest([group_id])
                    response = await admin._send_request_to_node(node, request)
                    codes = {code for _, code in response.results} - {0, _GROUP_ID_NOT_FOUND}
                    if codes:
                        raise BrokerUnavailable(
                            f"Kafka refused to delete group {group_id!r} "
                            f"(error codes {sorted(codes)})"
                        )
                await admin.delete_topics(self.settings.retry_topics(group, topic))
            finally:
                await admin.close()


_GROUP_ID_NOT_FOUND = 69


def from_url(url: str, **options: Any) -> KafkaBroker:
    """``kafka://host:port[,host:port]``; keyword options go to :class:`KafkaBroker`."""
    parts = urlsplit(url)
    if parts.query or parts.username or parts.path not in ("", "/"):
        raise ConfigurationError(
            f"kafka URLs are kafka://host:port[,host:port], not {redact_url(url)!r}: pass "
            "credentials and "
            "settings as keyword options (sasl_plain_username=..., consumer_options={...})"
        )
    return KafkaBroker(parts.netloc, **options)
