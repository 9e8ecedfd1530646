"""The Redis Streams adapter (``redis://`` and ``rediss://``; ``pip install "eventbus[redis]"``).

It translates and never decides: it moves envelopes to and from Redis Streams and settles each
delivery as the consume policy says. The package, by concern (each module imports only those
below it):

* this module — :class:`RedisBroker`: connect, close, publish, subscribe; :func:`from_url`;
* :mod:`~eventbus.brokers.redis.consumer` — :class:`RedisConsumer`, :class:`RedisDelivery`:
  reading, settling, crash recovery; :mod:`~eventbus.brokers.redis.acks` batches plain acks;
* :mod:`~eventbus.brokers.redis.publisher` — one publish round trip in flight, the rest
  pipelined; :mod:`~eventbus.brokers.redis.mover` — the delayed-retry mover;
* :mod:`~eventbus.brokers.redis.deadletters` — :class:`RedisDeadLetters`;
* :mod:`~eventbus.brokers.redis.entries` — what the stream entries hold (events, redelivered
  copies, dead letters);
* :mod:`~eventbus.brokers.redis.link` — the client, every call bounded by the socket timeout,
  redis-py's errors translated; :mod:`~eventbus.brokers.redis.packing` — its commands packed
  by hiredis; :mod:`~eventbus.brokers.redis.scripts` — the Lua scripts;
* :mod:`~eventbus.brokers.redis.topology` — key names and the checks of the options.

Options: keyword arguments that are not the adapter's own go to
``redis.asyncio.Redis.from_url`` untouched (https://redis.readthedocs.io/en/stable/connections.html);
only ``socket_timeout`` is then moved from the connections to the adapter's own calls, and
commands are packed by hiredis rather than redis-py's Python packer (the same bytes).
Not supported: Redis Cluster (the scripts touch keys of several slots) and patterns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from eventbus.brokers._wire import check_max_message_bytes, hosts_of
from eventbus.brokers.redis.consumer import RedisConsumer, RedisDelivery
from eventbus.brokers.redis.deadletters import RedisDeadLetters
from eventbus.brokers.redis.entries import foreign
from eventbus.brokers.redis.link import PUBLISH_ERRORS, Link
from eventbus.brokers.redis.mover import DelayedMover
from eventbus.brokers.redis.publisher import Publisher
from eventbus.brokers.redis.topology import (
    DEFAULT_MAX_MESSAGE_BYTES,
    checked_group,
    driver_options,
    settings,
)
from eventbus.clock import SystemClock
from eventbus.envelope import Envelope, to_structured
from eventbus.redact import redact_url
from eventbus.types import Capabilities, SubscriptionView, WireChannel, WireFormat

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "RedisBroker",
    "RedisConsumer",
    "RedisDeadLetters",
    "RedisDelivery",
    "from_url",
]


class RedisBroker:
    """Redis Streams adapter; docs/brokers/redis.md describes topology and semantics.

    ``url`` goes to ``redis.asyncio.Redis.from_url`` with ``options``; or pass a ready
    ``client`` (not closed by the adapter). ``prefix`` starts every key. ``maxlen`` trims
    destination streams to about that many entries (``XADD MAXLEN ~``; ``None`` keeps all —
    trimming drops events a slow group has not read yet). ``start_from`` is where a new group
    starts: ``"latest"`` (``$``) or ``"earliest"`` (``0``, whatever the stream still holds).
    ``batch_size`` entries are fetched per ``XREADGROUP``, which blocks up to ``block``
    seconds. Entries pending longer than ``claim_idle`` seconds are reclaimed from dead
    consumers, checked every ``claim_interval`` seconds: ``claim_idle`` must exceed your
    longest handler, or a slow handler's message is handled twice. ``delay_poll`` bounds how
    late a delayed retry scheduled by another process is moved back. ``max_message_bytes`` is
    the payload limit the bus applies (:data:`DEFAULT_MAX_MESSAGE_BYTES`).
    """

    system = "redis"
    """The OpenTelemetry ``messaging.system`` of this adapter."""
    capabilities = Capabilities(
        persistent=True,  # with appendonly (AOF) on the server; see docs/brokers/redis.md
        consumer_groups=True,
        ordered_per_key=True,  # within one consumer: competing consumers interleave keys
        delayed_redelivery=True,
        dead_letters=True,
        pattern_subscriptions=False,  # Redis has no topic routing: refused at subscribe time
        uncounted_release=True,
        counts_crash_redeliveries=True,  # Redis' delivery count of a claimed entry
    )
    clock = SystemClock()

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        client: aioredis.Redis | None = None,
        prefix: str = "eventbus:",
        maxlen: int | None = None,
        start_from: str = "latest",
        batch_size: int = 32,
        block: float = 2.0,
        claim_idle: float = 60.0,
        claim_interval: float = 15.0,
        delay_poll: float = 1.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        **options: Any,
    ) -> None:
        self.max_message_bytes = check_max_message_bytes(max_message_bytes)
        self._options = driver_options(options, block)
        self.settings = settings(
            prefix=prefix,
            maxlen=maxlen,
            start_from=start_from,
            batch_size=batch_size,
            block=block,
            claim_idle=claim_idle,
            claim_interval=claim_interval,
            delay_poll=delay_poll,
        )
        self.url = url
        self.keys = self.settings.keys
        self._given_client = client
        self._link = Link()
        self._publisher = Publisher(self._link, maxlen)
        self._mover = DelayedMover(self._link, self.keys.delayed, batch_size, delay_poll)
        self._dead = RedisDeadLetters(self._link, self.keys)

    # ---------------------------------------------------------------- lifecycle
    async def connect(self) -> None:
        """Create the client (unless one was given) and check that Redis answers.

        A client the adapter creates gets redis-py's ``socket_timeout`` (5 s unless set) taken
        off its connections and applied by the adapter to every call instead, reads included
        (a blocking ``XREADGROUP`` gets ``block`` more); see :mod:`~eventbus.brokers.redis.link`
        for why. A given ``client`` is used as it is.
        """
        await self._link.open(self.url, self._options, self._given_client)

    async def close(self) -> None:
        """Send what is queued, stop the delayed-retry mover, release the connections (if owned)."""
        await self._publisher.close()
        await self._mover.stop()
        await self._link.close(owned=self._given_client is None)

    @property
    def redis(self) -> aioredis.Redis:
        """The connected client; raises :class:`~eventbus.errors.BusNotStarted` before connect."""
        return self._link.redis

    @property
    def scripts(self) -> dict[str, AsyncScript]:
        """The registered Lua scripts by name (:mod:`~eventbus.brokers.redis.scripts`)."""
        return self._link.scripts

    @property
    def socket_timeout(self) -> float | None:
        """Bound of every call the adapter makes (``socket_timeout``; see :meth:`connect`)."""
        return self._link.socket_timeout

    @property
    def dead_letters(self) -> RedisDeadLetters:
        return self._dead

    def wire_format(self) -> WireFormat:
        """Structured mode: one CloudEvents JSON document in each entry's ``data`` field."""
        path = urlsplit(self.url).path.strip("/") or None
        return WireFormat("redis", hosts_of(self.url, 6379), path, header_prefix=None)

    def channel(self, destination: str) -> WireChannel:
        return WireChannel(self.keys.stream(destination), description="A Redis stream.")

    def receive_bindings(self, subscription: SubscriptionView) -> dict[str, Any]:
        return {}

    def internal_channels(self, subscription: SubscriptionView) -> list[WireChannel]:
        group = subscription.group or subscription.name
        return [
            WireChannel(
                self.keys.retry(subscription.topic, group),
                "retry",
                f"Redeliveries of group {group!r} (nacks, delayed retries, replays); a delayed "
                f"copy waits in the sorted set {self.keys.delayed!r} until due.",
            ),
            WireChannel(
                self.keys.dlq(group),
                "dead-letter",
                f"Dead letters of group {group!r}: the original fields, provenance in "
                "eventbus-dlq-* fields.",
            ),
        ]

    def pending(self) -> None:
        """Not known exactly on a network broker (``bus.drain()`` waits for idle handlers)."""
        return

    async def lag(self, subscription: SubscriptionView) -> int | None:
        """Entries the subscription's group has not acknowledged, on its destination stream and
        its retry stream: not yet read plus read and pending. Delayed retries waiting for their
        time (in the ``~delayed`` set) are not counted."""
        group = checked_group(subscription)
        streams = (self.keys.stream(subscription.topic), self.keys.retry(subscription.topic, group))
        return await self._link.group_lag(streams, group)

    def __repr__(self) -> str:
        return f"RedisBroker({redact_url(self.url)!r}, prefix={self.keys.prefix!r})"

    # ---------------------------------------------------------------- publishing
    async def publish(self, destination: str, envelope: Envelope) -> None:
        """``XADD`` the event; returns once Redis has replied to this very ``XADD``.

        At most one publish round trip is in flight at a time: publishes that arrive meanwhile
        (concurrent tasks) wait for it and then go out together, as one pipeline on one
        connection (:mod:`~eventbus.brokers.redis.publisher`).
        """
        stream = self.keys.stream(destination)
        await self._publisher.publish(stream, to_structured(envelope), envelope.id, destination)

    async def publish_batch(self, messages: Sequence[tuple[str, Envelope]]) -> None:
        """One pipelined round trip; on an error some events may have been published already."""
        entries = [(self.keys.stream(d), to_structured(e)) for d, e in messages]
        await self._publisher.publish_batch(entries)

    async def send_raw(
        self,
        destination: str,
        body: bytes,
        headers: Mapping[str, Any] | None = None,
        key: str | None = None,
    ) -> None:
        """Add an entry as a foreign producer would: ``data`` = ``body``, headers as fields."""
        async with self._link.call(f"send to {destination!r}", PUBLISH_ERRORS):
            await self.redis.xadd(
                self.keys.stream(destination),
                foreign(body, headers, key),
                maxlen=self.settings.maxlen,
            )

    # ---------------------------------------------------------------- consuming
    async def subscribe(self, subscription: SubscriptionView) -> RedisConsumer:
        """Create the group on the destination and on its retry stream, start the mover."""
        group = checked_group(subscription)
        main = self.keys.stream(subscription.topic)
        retry = self.keys.retry(subscription.topic, group)
        await self.create_group(main, group, self.settings.start_id)
        await self.create_group(retry, group, "0")  # private: read it all
        self._mover.start()
        return RedisConsumer(
            self._link, self.settings, subscription, (main, retry), self._mover.wake
        )

    async def create_group(self, stream: str, group: str, start_id: str) -> None:
        """``XGROUP CREATE ... MKSTREAM``; a group that exists already is left as it is."""
        await self._link.create_group(stream, group, start_id)

    async def remove_group(self, subscription: SubscriptionView) -> None:
        """``XGROUP DESTROY`` the group on its destination and delete its retry stream (its
        own); its dead letters are kept."""
        group = checked_group(subscription)
        async with self._link.call(f"remove consumer group {group!r}"):
            await self.redis.xgroup_destroy(self.keys.stream(subscription.topic), group)
            await self.redis.delete(self.keys.retry(subscription.topic, group))


def from_url(url: str, **options: Any) -> RedisBroker:
    """``redis://[[user]:password@]host[:port][/db]`` or ``rediss://`` (TLS).

    The URL, its ``?query`` options and every keyword that is not an adapter option go to
    ``redis.asyncio.Redis.from_url``.
    """
    return RedisBroker(url, **options)
