"""The Kafka adapter (aiokafka): ``kafka://host:port[,host:port]``.

**Wire format.** CloudEvents binary content mode: ``ce_*`` headers and ``content-type``, the
payload as the value, ``partitionkey`` as the record key (so one key stays on one partition
and in order). Structured mode and the other header prefixes are accepted on input.

**Topology.** The destination is the topic: one topic per event type by default, or several
types on one topic with ``Event.event_topic`` (the bus filters by type). Each subscription
is a consumer in its consumer group, with ``enable_auto_commit=False`` and
``auto_offset_reset="earliest"`` for groups without committed offsets, so nothing published
after ``bus.start()`` is missed. ``subscribe`` returns once the group has been joined.
Offsets are committed *after* handling, and per partition only up to the lowest unfinished
message, so with ``concurrency > 1`` a crash never skips an unhandled message. On a rebalance
the revoked partitions' in-flight work gets ``revoke_timeout`` seconds to finish; what is
still running then is abandoned uncommitted, and the new owner handles it again.

**Retries without blocking the partition** (the "retry topics" of Spring Kafka). ``nack`` and
``retry_later(delay)`` republish a copy (same key, value and ``ce_*`` headers, plus
``eventbus-attempt``, ``eventbus-due`` in epoch ms, ``eventbus-destination`` and the carried
metadata as ``eventbus-<key>``) to a retry topic of the subscription's own group,
``__eventbus.retry.{group}.{topic}.{tier}ms``, then commit the original. ``retry_tiers`` are
the tiers; a delay goes to the largest tier not above it (tier 0 always exists). The same
consumer reads its retry topics; a partition whose head is not due yet is paused (never slept
on) until it is. A retry partition found empty is paused too, and looked at again every
``retry_poll_interval``, so fetches do not carry every tier's partitions every time.
``nack`` waits ``nack_delay`` so a failing handler is not a tight loop.

**Dead letters** go to ``__eventbus.dlq.{group}``: the original value and headers, keyed by
the dead-letter id, with provenance headers ``eventbus-dlq-*`` (the original key is in
``eventbus-dlq-key``). Kafka cannot delete one record, so replay and purge append a
tombstone (same key, no value) that listing skips; set ``cleanup.policy=compact`` on those
topics to reclaim the space. A replay goes to the failed group's tier-0 retry topic with the
attempt reset to 1. See ``docs/brokers/kafka.md``.

**Options.** ``producer_options`` go to ``AIOKafkaProducer``, ``consumer_options`` to
``AIOKafkaConsumer`` (https://aiokafka.readthedocs.io/en/stable/api.html; its
``max_poll_records`` is also how many records one fetch hands to the bus, 50 if unset); the
security options (``security_protocol``, ``ssl_context``, ``sasl_*``) and ``client_id`` go to
both. Concurrent ``publish`` calls share produce requests: records handed to the producer while
a request is in flight go out together in the next one, and each call still returns only once
Kafka has acknowledged its record.
Internal topics are created by the broker's auto-creation when first touched (at subscribe);
a cluster with ``auto.create.topics.enable=false`` needs them created beforehand.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import time
from collections.abc import AsyncIterator, Iterator, Mapping, MutableMapping, Sequence
from typing import Any

from aiokafka import (  # type: ignore[import-untyped]
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
)
from aiokafka.errors import KafkaConnectionError, KafkaError  # type: ignore[import-untyped]
from aiokafka.errors import KafkaTimeoutError as _KafkaTimeout

from eventbus.brokers._wire import check_max_message_bytes, whole_number
from eventbus.clock import SystemClock
from eventbus.deadletters import DeadLetterRecord
from eventbus.envelope import Envelope, decode, from_binary, to_binary
from eventbus.errors import (
    BrokerUnavailable,
    BusNotStarted,
    ConfigurationError,
    DecodeError,
    EventBusError,
    PublishError,
)
from eventbus.types import Capabilities, SubscriptionView

__all__ = ["KafkaBroker", "KafkaConsumer", "KafkaDelivery", "from_url", "pattern_regex"]

log = logging.getLogger("eventbus.kafka")

PREFIX = "eventbus-"
DEFAULT_MAX_MESSAGE_BYTES = 1_000_000
"""Payload limit: with its headers a record then fits Kafka's default 1 MiB request and
``message.max.bytes``."""
_KAFKA_REQUEST_SIZE = 1_048_576  # aiokafka's (and Kafka's) default max_request_size
_HEADROOM = 64 * 1024
ATTEMPT, DUE, DESTINATION = "eventbus-attempt", "eventbus-due", "eventbus-destination"
DLQ = "eventbus-dlq-"
_RESERVED = frozenset({ATTEMPT, DUE, DESTINATION})
INTERNAL = "__eventbus."
SECURITY_OPTIONS = frozenset(
    {
        "client_id",
        "security_protocol",
        "ssl_context",
        "sasl_mechanism",
        "sasl_plain_username",
        "sasl_plain_password",
        "sasl_kerberos_service_name",
        "sasl_kerberos_domain_name",
        "sasl_oauth_token_provider",
    }
)
_OURS = frozenset({"group_id", "enable_auto_commit", "bootstrap_servers"})
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
Headers = list[tuple[str, bytes]]


def pattern_regex(pattern: str) -> str:
    """The regex (for ``subscribe(pattern=...)``) matching topic names the way
    :func:`eventbus.router.topic_matches` matches type names; internal ``__`` topics excluded."""
    words: list[str] = []
    for word in pattern.split("."):
        if not (word == "#" and words and words[-1] == "#"):  # '#.#' is '#'
            words.append(word)
    if words == ["#"]:
        return r"^(?!__).+\Z"
    out, sep = "", ""
    for i, word in enumerate(words):
        if word == "#":
            out += r"(?:\.[^.]+)*" if i else r"(?:[^.]+\.)*"
            sep = "" if not i else r"\."
            continue
        out += sep + (r"[^.]+" if word == "*" else re.escape(word))
        sep = r"\."
    return rf"^(?!__){out}\Z"


def _part(name: str) -> str:
    """``name`` as part of a topic name: unsafe characters replaced, made unique by a hash."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", name.replace(".", "-"))
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{safe[:80]}-{digest}" if safe != name.replace(".", "-") or len(safe) > 80 else safe


def retry_topic(group: str, topic: str, tier: float) -> str:
    return f"{INTERNAL}retry.{_part(group)}.{_part(topic)}.{round(tier * 1000)}ms"


def dlq_topic(group: str) -> str:
    return f"{INTERNAL}dlq.{_part(group)}"


def check_topic(topic: str) -> str:
    if not _TOPIC.match(topic) or topic in (".", ".."):
        raise ConfigurationError(
            f"{topic!r} is not a valid Kafka topic name (letters, digits, '.', '_', '-', at most "
            "249); give the event class an event_topic = '...' that is one"
        )
    return topic


def driver_error(
    exc: KafkaError, action: str, error: type[EventBusError] = PublishError
) -> EventBusError:
    """The eventbus error, saying what to do, for an aiokafka exception."""
    if isinstance(exc, (KafkaConnectionError, _KafkaTimeout)):
        return BrokerUnavailable(
            f"Kafka did not answer while trying to {action}: {exc}; check that the brokers "
            "in the kafka:// URL are reachable"
        )
    return error(f"Kafka refused to {action}: {exc!r}")


@contextlib.contextmanager
def driver_errors(action: str, error: type[EventBusError] = PublishError) -> Iterator[None]:
    """The adapter's edge: aiokafka exceptions become eventbus errors that say what to do."""
    try:
        yield
    except KafkaError as exc:
        raise driver_error(exc, action, error) from exc


def _encode(headers: Mapping[str, Any]) -> Headers:
    out: Headers = []
    for name, value in headers.items():
        if value is not None and not isinstance(value, bytes):
            value = str(value).encode()
        out.append((name, value))
    return out


def _now_ms() -> int:
    return int(time.time() * 1000)  # the clock of aiokafka's last_poll_timestamp


def _header(headers: Mapping[str, Any], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class KafkaBroker:
    """Kafka adapter; see the module documentation for topology, retries and dead letters.

    ``retry_tiers`` (seconds) are the delays that get a retry topic; ``nack_delay`` is how
    long a nacked message waits; ``retry_poll_interval`` how often a retry partition found
    empty is looked at again; ``join_timeout`` bounds how long ``subscribe`` waits for the
    group join; ``revoke_timeout`` how long a rebalance waits for in-flight work.
    """

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
        unknown = sorted(set(common) - SECURITY_OPTIONS)
        if unknown:
            raise ConfigurationError(
                f"unknown Kafka option(s) {unknown}: pass producer settings in "
                "producer_options={...} and consumer settings in consumer_options={...}; "
                f"top-level options are {sorted(SECURITY_OPTIONS)}"
            )
        clash = sorted(_OURS & set(consumer_options or {}))
        if clash:
            raise ConfigurationError(
                f"consumer_options may not set {clash}: the group is the subscription's group, "
                "and offsets are committed by the adapter after handling"
            )
        if (
            any(t < 0 for t in retry_tiers)
            or nack_delay < 0
            or min(join_timeout, revoke_timeout, retry_poll_interval) <= 0
        ):
            raise ConfigurationError(
                "retry_tiers and nack_delay must be >= 0, timeouts and retry_poll_interval > 0"
            )
        servers = (
            bootstrap_servers.split(",")
            if isinstance(bootstrap_servers, str)
            else bootstrap_servers
        )
        self.bootstrap_servers = [s.strip() for s in servers if s.strip()]
        if not self.bootstrap_servers:
            raise ConfigurationError("give at least one broker: kafka://host:9092")
        self.common = dict(common)
        # Room for the payload limit plus the CloudEvents headers and the record framing.
        request_size = max(_KAFKA_REQUEST_SIZE, self.max_message_bytes + _HEADROOM)
        self.producer_options = {
            "acks": "all",
            "max_request_size": request_size,
            **(producer_options or {}),
        }
        self.max_request_size: int = self.producer_options["max_request_size"]
        self.consumer_options = dict(consumer_options or {})
        # Records per fetch handed to the bus: aiokafka's own setting when given.
        self.max_records: int | None = self.consumer_options.get("max_poll_records", 50)
        self.retry_tiers = tuple(sorted({0.0, *map(float, retry_tiers)}))
        self.nack_delay = nack_delay
        self.retry_poll_interval = retry_poll_interval
        self.join_timeout = join_timeout
        self.revoke_timeout = revoke_timeout
        self._producer: Any = None
        self._checked: set[str] = set()  # topic names already found valid
        self._connected = 0
        self._consumers: set[KafkaConsumer] = set()
        from eventbus.brokers.kafka_deadletters import KafkaDeadLetters

        self._dead = KafkaDeadLetters(self)

    # ---------------------------------------------------------------- lifecycle
    async def connect(self) -> None:
        self._connected += 1
        if self._producer is not None:
            return
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap_servers, **self.common, **self.producer_options
        )
        try:
            with driver_errors("connect", BrokerUnavailable):
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
        producer, self._producer = self._producer, None
        with driver_errors("flush pending events on close"):
            await producer.stop()  # flushes what is still batched

    @property
    def dead_letters(self) -> Any:
        return self._dead

    def pending(self) -> None:
        """Not known exactly on a network broker (``bus.drain()`` waits for idle handlers)."""
        return

    def consumer_config(self, **overrides: Any) -> dict[str, Any]:
        return {
            "bootstrap_servers": self.bootstrap_servers,
            **self.common,
            "auto_offset_reset": "earliest",
            **self.consumer_options,
            **overrides,
        }

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
        try:
            future: asyncio.Future[Any] = await producer.send(
                self._topic(topic), value, key=key, headers=headers
            )
        except KafkaError as exc:
            raise driver_error(exc, f"publish to {topic!r}") from exc
        return future

    async def _wait(self, futures: Sequence[asyncio.Future[Any]], topic: str) -> None:
        try:
            await asyncio.gather(*futures)
        except KafkaError as exc:
            raise driver_error(exc, f"publish to {topic!r}") from exc

    async def publish(self, destination: str, envelope: Envelope) -> None:
        """Returns once Kafka has the record (``acks="all"`` unless configured otherwise)."""
        headers, body = to_binary(envelope)
        key = envelope.partitionkey
        future = await self.send(
            destination,
            body,
            None if key is None else key.encode(),
            [(name, value.encode()) for name, value in headers.items()],
        )
        try:
            await future
        except KafkaError as exc:
            raise driver_error(exc, f"publish to {destination!r}") from exc

    async def publish_batch(self, messages: Sequence[tuple[str, Envelope]]) -> None:
        """Pipelined: every record is handed to the producer before any acknowledgement."""
        futures = []
        for destination, envelope in messages:
            headers, body = to_binary(envelope)
            key = envelope.partitionkey
            futures.append(
                await self.send(
                    destination,
                    body,
                    None if key is None else key.encode(),
                    [(name, value.encode()) for name, value in headers.items()],
                )
            )
        await self._wait(futures, messages[0][0] if messages else "")

    async def send_raw(
        self,
        destination: str,
        body: bytes,
        headers: Mapping[str, Any] | None = None,
        key: str | bytes | None = None,
    ) -> None:
        """Put bytes on a topic as a foreign producer would, without any encoding."""
        raw_key = key.encode() if isinstance(key, str) else key
        future = await self.send(destination, body, raw_key, _encode(headers or {}))
        await self._wait([future], destination)

    async def touch(self, topics: Sequence[str]) -> None:
        """Make sure the topics exist (broker auto-creation) before a consumer subscribes."""
        producer = self._require_producer()
        with driver_errors(f"look up topics {list(topics)}", BrokerUnavailable):
            for topic in topics:
                await producer.partitions_for(topic)

    # ---------------------------------------------------------------- consuming
    def tier(self, delay: float) -> float:
        return max(t for t in self.retry_tiers if t <= max(delay, 0.0))

    async def subscribe(self, subscription: SubscriptionView) -> KafkaConsumer:
        if subscription.group is None:
            raise ValueError("subscription has no group; include it into a bus first")
        self._require_producer()
        consumer = KafkaConsumer(self, subscription)
        await consumer.start()
        self._consumers.add(consumer)
        return consumer


class _Partition:
    """Offsets of one assigned partition: what is in flight and what is safe to commit.

    A new object per assignment, so settling a delivery from a revoked (and perhaps
    reassigned) partition is recognised and never commits.
    """

    __slots__ = ("committed", "inflight", "next", "returned")

    def __init__(self) -> None:
        self.inflight: set[int] = set()
        self.returned: set[int] = set()  # handed back to be read again: never committed past
        self.next: int | None = None
        self.committed = -1

    def safe(self) -> int | None:
        """The offset to commit: the lowest unfinished one, else one past the last delivered."""
        if self.returned:
            return min(self.returned | self.inflight)
        return min(self.inflight) if self.inflight else self.next


class KafkaConsumer(ConsumerRebalanceListener):  # type: ignore[misc]
    """One subscription's consumer: the main topic(s) and the group's retry topics."""

    def __init__(self, broker: KafkaBroker, sub: SubscriptionView) -> None:
        self.broker = broker
        self.sub = sub
        self.group: str = sub.group or ""
        # Kafka gives each partition to one member of a group; a pattern's topics may overlap
        # another subscription's in the same group, so a pattern gets a Kafka group of its own.
        self.group_id = f"{self.group}:{sub.topic}" if sub.is_pattern else self.group
        self.retry_topics = [retry_topic(self.group, sub.topic, t) for t in broker.retry_tiers]
        self._retry_set = frozenset(self.retry_topics)
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
        sub, broker = self.sub, self.broker
        internal = [*self.retry_topics, dlq_topic(self.group)]
        await broker.touch(internal if sub.is_pattern else [check_topic(sub.topic), *internal])
        self._kafka = AIOKafkaConsumer(
            **broker.consumer_config(group_id=self.group_id, enable_auto_commit=False)
        )
        with driver_errors(f"start a consumer for {sub.topic!r}", BrokerUnavailable):
            await self._kafka.start()
        if sub.is_pattern:
            retries = "|".join(re.escape(t) for t in self.retry_topics)
            main = pattern_regex(sub.topic)[1:-2]
            self._kafka.subscribe(pattern=rf"^(?:{main}|{retries})\Z", listener=self)
        else:
            self._kafka.subscribe(topics=[sub.topic, *self.retry_topics], listener=self)
        try:
            await asyncio.wait_for(self._joined.wait(), broker.join_timeout)
        except asyncio.TimeoutError:
            await self._kafka.stop()
            raise BrokerUnavailable(
                f"consumer group {self.group!r} was not joined within {broker.join_timeout}s; "
                "raise join_timeout=..., or check the brokers and session_timeout_ms"
            ) from None
        loop = asyncio.get_running_loop()
        self._committer = loop.create_task(self._commit_loop())
        self._poller = loop.call_later(self.broker.retry_poll_interval, self._poll_retries)

    # ---------------------------------------------------------------- rebalancing
    async def on_partitions_assigned(self, assigned: Any) -> None:
        now = _now_ms()
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
        deadline = time.monotonic() + self.broker.revoke_timeout
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
        self._poller = loop.call_later(self.broker.retry_poll_interval, self._poll_retries)
        now, idle, self._idle = _now_ms(), self._idle, set()
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
        max_records = self.broker.max_records
        while not self._closed:
            self._rewound.clear()
            try:
                batch = await self._kafka.getmany(timeout_ms=1000, max_records=max_records)
            except KafkaError as exc:
                raise driver_error(
                    exc, f"fetch from {self.sub.topic!r}", BrokerUnavailable
                ) from exc
            if self._polling:
                await self._pause_empty_retries()
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

    def _admit(self, tp: Any, record: Any) -> KafkaDelivery | None:
        part = self._parts.get(tp)
        if part is None:
            return None
        headers = dict(record.headers)
        if DUE in headers:
            due = _header(headers, DUE)
            wait = whole_number(due, 0) / 1000 - time.time()
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
            self._polling[tp] = _now_ms()

    async def republish(self, delivery: KafkaDelivery, delay: float) -> None:
        """The retry-topic copy: original key, value and headers, the next attempt, metadata."""
        headers = [(k, v) for k, v in delivery.raw_headers if not k.startswith(PREFIX)]
        headers += [(PREFIX + k, v.encode()) for k, v in delivery.metadata.items()]
        headers += [
            (ATTEMPT, str(delivery.attempt + 1).encode()),
            (DUE, str(int((time.time() + delay) * 1000)).encode()),
            (DESTINATION, delivery.destination.encode()),
        ]
        topic = retry_topic(self.group, self.sub.topic, self.broker.tier(delay))
        future = await self.broker.send(topic, delivery.body, delivery.key, headers)
        await self.broker._wait([future], topic)

    async def close(self) -> None:
        """Stop fetching and commit what is safe; unsettled deliveries stay uncommitted, so
        the group gets them again."""
        if self._closed:
            return
        self._closed = True
        self.broker._consumers.discard(self)
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


class KafkaDelivery:
    """One record; ``headers`` are the record's headers as received (values are bytes)."""

    __slots__ = (
        "_consumer",
        "_done",
        "attempt",
        "body",
        "decode_error",
        "destination",
        "envelope",
        "headers",
        "key",
        "metadata",
        "offset",
        "partition",
        "raw_headers",
        "tp",
    )

    def __init__(
        self,
        consumer: KafkaConsumer,
        tp: Any,
        partition: _Partition,
        record: Any,
        headers: dict[str, Any] | None = None,
    ):
        self._consumer = consumer
        self._done = False
        self.tp, self.partition, self.offset = tp, partition, record.offset
        self.raw_headers: Headers = list(record.headers)
        self.headers: Mapping[str, Any] = dict(self.raw_headers) if headers is None else headers
        self.body: bytes = record.value or b""
        self.key: bytes | None = record.key
        self.attempt = 1
        self.destination: str = record.topic
        self.metadata: MutableMapping[str, str] = {}
        for name in self.headers:
            if name.startswith(PREFIX):  # only on retry copies
                self._carried(name)
        self.envelope: Envelope | None = None
        self.decode_error: DecodeError | None = None
        try:
            if (
                "ce_specversion" in self.headers
                and self.headers.get("content-type") == b"application/json"
            ):  # what eventbus writes: what decode() would find, without looking for it
                self.envelope = from_binary(self.headers, record.value, key=record.key)
            else:
                self.envelope = decode(self.headers, record.value, key=record.key)
        except DecodeError as exc:
            self.decode_error = exc

    def _carried(self, name: str) -> None:
        value = _header(self.headers, name)
        if name == ATTEMPT:
            self.attempt = max(1, whole_number(value, 1))
        elif name == DESTINATION:
            self.destination = value or self.destination
        elif name not in _RESERVED and not name.startswith(DLQ):
            self.metadata[name[len(PREFIX) :]] = value or ""

    def _claim(self) -> bool:
        done, self._done = self._done, True
        return not done

    async def ack(self) -> None:
        if self._claim():
            self._consumer.settle(self)

    async def nack(self) -> None:
        await self.retry_later(self._consumer.broker.nack_delay)

    async def release(self) -> None:
        """Read again from Kafka with the attempt it had: the partition is sought back to it
        and nothing past it is committed until then (see ``KafkaConsumer.give_back``)."""
        if self._claim():
            self._consumer.give_back(self)

    async def retry_later(self, delay: float) -> None:
        if self._done:
            return
        await self._consumer.republish(self, delay)  # raises: stays unsettled, redelivered
        if self._claim():
            self._consumer.settle(self)

    async def dead_letter(self, record: DeadLetterRecord) -> None:
        if self._done:
            return
        await self._consumer.broker._dead.add(record, self._consumer.sub.topic, self.key)
        if self._claim():
            self._consumer.settle(self)


def from_url(url: str, **options: Any) -> KafkaBroker:
    """``kafka://host:port[,host:port]``; keyword options go to :class:`KafkaBroker`."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.query or parts.username or parts.path not in ("", "/"):
        raise ConfigurationError(
            f"kafka URLs are kafka://host:port[,host:port], not {url!r}: pass credentials and "
            "settings as keyword options (sasl_plain_username=..., consumer_options={...})"
        )
    return KafkaBroker(parts.netloc, **options)
