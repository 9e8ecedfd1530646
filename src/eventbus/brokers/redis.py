"""The Redis Streams adapter (``redis://`` and ``rediss://``; ``pip install "eventbus[redis]"``).

Topology (``prefix`` defaults to ``eventbus:``; ``~`` cannot occur in a destination, so
the keys of different destinations and groups never collide):

* ``{prefix}{destination}`` — the stream events are published to (``XADD``, optional
  ``MAXLEN ~`` trimming). Every subscription is a consumer group on it, created at subscribe
  time with ``MKSTREAM``; a brand-new group starts at ``$`` (only events published from now
  on, like Kafka's ``latest``) unless ``start_from="earliest"``.
* ``{prefix}{destination}~retry~{group}`` — the group's private stream for redeliveries
  (nack, delayed retries, replayed dead letters), so a retry in one group is never seen by the
  others. The consumer reads both streams in one ``XREADGROUP``.
* ``{prefix}~delayed`` — a sorted set of messages waiting for ``retry_later``, scored by due
  time on the Redis clock; a mover task (one per adapter with subscriptions) moves due ones
  back with a Lua script, so two movers never move one twice.
* ``{prefix}~dlq~{group}`` — the group's dead-letter stream (``data`` = original bytes,
  ``headers`` and ``record`` = JSON provenance), indexed by ``{prefix}~dlq-index``.

Wire format: an entry ``{"data": <structured CloudEvents JSON>, "content-type":
"application/cloudevents+json"}`` (the Dapr convention); redeliveries add ``eventbus-attempt``
and ``eventbus-<key>`` fields for the carried ``metadata``. Every settle but a plain ack (nack,
delay, dead-letter, the ack of a retry-stream entry) is one Lua script that does nothing unless
its ``XACK`` removed the entry from the group's pending list, so a settle is atomic and never
duplicates a message. Plain acks of main-stream entries are batched: one ``XACK`` per batch
read (:class:`RedisConsumer`).

Publishing: one publish round trip in flight per adapter; publishes made meanwhile go out
together as one pipeline, each answered with its own reply (:meth:`RedisBroker.publish`).
Timeouts: the adapter bounds every call with redis-py's ``socket_timeout`` itself
(:meth:`RedisBroker.connect`).

Crash recovery: every ``claim_interval`` a consumer ``XAUTOCLAIM``s entries pending longer
than ``claim_idle`` (their consumer died); after a connection error it re-reads its own
pending entries (id ``0``). ``attempt`` is the carried attempt plus Redis' delivery count.

Options: keyword arguments that are not the adapter's own go to
``redis.asyncio.Redis.from_url`` untouched (https://redis.readthedocs.io/en/stable/connections.html);
only ``socket_timeout`` is then moved from the connections to the adapter's own calls.
Not supported: Redis Cluster (the scripts touch keys of several slots) and patterns.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import difflib
import inspect
import logging
import os
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

if sys.version_info >= (3, 11):
    from asyncio import timeout as _timeout
else:  # pragma: no cover - redis-py depends on async-timeout there
    from async_timeout import timeout as _timeout

from eventbus.brokers._wire import check_max_message_bytes
from eventbus.clock import SystemClock
from eventbus.deadletters import DeadLetterRecord
from eventbus.envelope import (
    STRUCTURED_CONTENT_TYPE,
    Envelope,
    decode,
    from_structured,
    to_structured,
)
from eventbus.errors import (
    BrokerUnavailable,
    BusNotStarted,
    ConfigurationError,
    DecodeError,
    EventBusError,
    PublishError,
)
from eventbus.types import Capabilities, SubscriptionView

if TYPE_CHECKING:
    from eventbus.brokers.redis_deadletters import RedisDeadLetters

__all__ = ["RedisBroker", "RedisConsumer", "RedisDelivery", "from_url"]

log = logging.getLogger("eventbus.redis")

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""Redis takes values up to 512 MB, but every stream entry stays in the server's memory until it
is trimmed, and a large one stalls the connection it travels on: 16 MiB is a sensible bound."""
ATTEMPT = "eventbus-attempt"
_CARRIED = "eventbus-"


def _entry(data: bytes) -> dict[Any, Any]:
    """The stream entry eventbus writes: a structured CloudEvent and its content type."""
    return {"data": data, "content-type": STRUCTURED_CONTENT_TYPE}


_ADAPTER_OPTIONS = frozenset(
    (
        "client",
        "prefix",
        "maxlen",
        "start_from",
        "batch_size",
        "block",
        "claim_idle",
        "claim_interval",
        "delay_poll",
    )
)

# Every settle starts by taking the entry off the group's pending list; if it was not there
# (settled already, or claimed and settled by another consumer) the script does nothing else.
# KEYS[1] source stream; ARGV[1] group, ARGV[2] entry id, ARGV[3] '1' = XDEL it (retry stream).
_SETTLE = """
local function settle()
  if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return false end
  if ARGV[3] == '1' then redis.call('XDEL', KEYS[1], ARGV[2]) end
  return true
end
"""
_ACK = _SETTLE + "return settle() and 1 or 0"
# KEYS[2] retry stream; ARGV[4..] fields of the copy.
_REQUEUE = (
    _SETTLE
    + """
if not settle() then return 0 end
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 4))
return 1
"""
)
# KEYS[2] delayed zset; ARGV[4] delay ms, ARGV[5] target stream, ARGV[6..] fields.
_DELAY = (
    _SETTLE
    + """
if not settle() then return 0 end
local t = redis.call('TIME')
local due = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[4])
local item = {ARGV[5], KEYS[1] .. ' ' .. ARGV[2] .. ' ' .. ARGV[1]}
for i = 6, #ARGV do item[#item + 1] = ARGV[i] end
redis.call('ZADD', KEYS[2], due, cmsgpack.pack(item))
return 1
"""
)
# KEYS[2] dlq stream, KEYS[3] dlq index; ARGV[4] dead-letter id, ARGV[5..] fields.
_DEAD = (
    _SETTLE
    + """
if not settle() then return 0 end
local eid = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 5))
redis.call('HSET', KEYS[3], ARGV[4], eid .. ' ' .. KEYS[2])
return 1
"""
)
# KEYS[1] delayed zset; ARGV[1] limit -> {moved, ms until the next one is due or -1}.
_MOVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, member in ipairs(due) do
  local item = cmsgpack.unpack(member)
  redis.call('XADD', item[1], '*', unpack(item, 3))
  redis.call('ZREM', KEYS[1], member)
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #nxt == 0 then return {#due, -1} end
return {#due, math.max(0, tonumber(nxt[2]) - now)}
"""
# KEYS[1] dlq index, KEYS[2] dlq stream, KEYS[3] target stream; ARGV[1] id, ARGV[2] entry id.
_REPLAY = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('XDEL', KEYS[2], ARGV[2])
redis.call('XADD', KEYS[3], '*', unpack(ARGV, 3))
return 1
"""
# KEYS[1] dlq index, KEYS[2] dlq stream -> how many were removed.
_PURGE = """
local entries = redis.call('XRANGE', KEYS[2], '-', '+')
for _, entry in ipairs(entries) do
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == 'id' then redis.call('HDEL', KEYS[1], fields[i + 1]) end
  end
end
redis.call('DEL', KEYS[2])
return #entries
"""

_SCRIPTS = {
    "ack": _ACK,
    "requeue": _REQUEUE,
    "delay": _DELAY,
    "dead": _DEAD,
    "move": _MOVE,
    "replay": _REPLAY,
    "purge": _PURGE,
}


def _translate(
    exc: RedisError, action: str, error: type[EventBusError] = EventBusError
) -> EventBusError:
    """The adapter's edge: a redis-py exception as the eventbus error that says what to do."""
    if isinstance(exc, (RedisConnectionError, RedisTimeoutError)):
        translated: EventBusError = BrokerUnavailable(
            f"could not {action}: Redis did not answer ({exc}); check that the server is up "
            "and the URL is right (the operation may be retried)"
        )
    else:
        translated = error(f"could not {action}: Redis refused it ({exc})")
    translated.__cause__ = exc
    return translated


def _timed_out(action: str, seconds: float | None) -> BrokerUnavailable:
    return BrokerUnavailable(
        f"could not {action}: Redis did not answer within {seconds}s (socket_timeout); check "
        "that the server is up and the URL is right (the operation may be retried)"
    )


class _Io:
    """``async with``: one Redis call, bounded by the adapter's socket timeout, with its errors
    translated (:func:`_translate`). The hot paths do the same inline."""

    __slots__ = ("_action", "_error", "_scope", "_seconds")

    def __init__(self, seconds: float | None, action: str, error: type[EventBusError]) -> None:
        self._seconds = seconds
        self._action = action
        self._error = error

    async def __aenter__(self) -> None:
        self._scope = _timeout(self._seconds)
        await self._scope.__aenter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self._scope.__aexit__(exc_type, exc, tb)
        except asyncio.TimeoutError as timed_out:
            raise _timed_out(self._action, self._seconds) from timed_out
        if isinstance(exc, RedisError):
            raise _translate(exc, self._action, self._error) from exc


@dataclasses.dataclass(frozen=True)
class _Keys:
    prefix: str

    def stream(self, destination: str) -> str:
        return f"{self.prefix}{destination}"

    def retry(self, destination: str, group: str) -> str:
        return f"{self.prefix}{destination}~retry~{group}"

    def dlq(self, group: str) -> str:
        return f"{self.prefix}~dlq~{group}"

    @property
    def dlq_index(self) -> str:
        return f"{self.prefix}~dlq-index"

    @property
    def delayed(self) -> str:
        return f"{self.prefix}~delayed"


class _QueuedPublish:
    """A publish waiting for the round trip in flight to end (see :meth:`RedisBroker.publish`)."""

    __slots__ = ("data", "destination", "event_id", "future", "stream")

    def __init__(
        self,
        stream: str,
        data: bytes,
        event_id: str,
        destination: str,
        future: asyncio.Future[None],
    ) -> None:
        self.stream = stream
        self.data = data
        self.event_id = event_id
        self.destination = destination
        self.future = future

    def fail(self, exc: BaseException, seconds: float | None = None) -> None:
        if self.future.done():
            return
        action = f"publish {self.event_id} to {self.destination!r}"
        error: EventBusError
        if isinstance(exc, RedisError):
            error = _translate(exc, action, PublishError)
        elif isinstance(exc, asyncio.TimeoutError):
            error = _timed_out(action, seconds)
            error.__cause__ = exc
        else:
            error = PublishError(
                f"could not {action}: the pipeline it was in was interrupted ({exc!r}); "
                "it may or may not have been published"
            )
            error.__cause__ = exc
        self.future.set_exception(error)


class RedisBroker:
    """Redis Streams adapter; the module documentation describes topology and semantics.

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
        _check_options(options, block)
        # Reconnect with backoff: redis-py retries a command on connection and timeout errors.
        options.setdefault("retry", Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=6))
        options.setdefault("retry_on_error", [RedisConnectionError, RedisTimeoutError])
        if start_from not in ("latest", "earliest"):
            raise ConfigurationError(
                f"start_from must be 'latest' or 'earliest', not {start_from!r}"
            )
        if maxlen is not None and maxlen < 1:
            raise ConfigurationError(f"maxlen must be a positive count or None, not {maxlen!r}")
        positive = {
            "batch_size": batch_size,
            "block": block,
            "claim_idle": claim_idle,
            "claim_interval": claim_interval,
            "delay_poll": delay_poll,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ConfigurationError(f"{name} must be > 0, got {value!r}")
        if not prefix:
            raise ConfigurationError("prefix must be a non-empty string, such as 'eventbus:'")
        self.url = url
        self.keys = _Keys(prefix)
        self.maxlen = maxlen
        self.start_id = "$" if start_from == "latest" else "0"
        self.batch_size = batch_size
        self.block_ms = int(block * 1000)
        self.claim_idle_ms = int(claim_idle * 1000)
        self.claim_interval = claim_interval
        self.delay_poll = delay_poll
        self._options = options
        self._given_client = client
        self._client: aioredis.Redis | None = None
        self.socket_timeout: float | None = None
        """Bound of every call the adapter makes (``socket_timeout``; see :meth:`connect`)."""
        self._mover: asyncio.Task[None] | None = None
        self._wake_mover = asyncio.Event()
        from eventbus.brokers.redis_deadletters import RedisDeadLetters

        self._dead = RedisDeadLetters(self)
        # Publishes that arrive while a publish round trip is in flight wait here; they then go
        # out together, as one pipeline (see `publish`).
        self._sending = False
        self._queued: list[_QueuedPublish] = []
        self._flusher: asyncio.Task[None] | None = None

    # ---------------------------------------------------------------- lifecycle
    async def connect(self) -> None:
        """Create the client (unless one was given) and check that Redis answers.

        A client the adapter creates gets redis-py's ``socket_timeout`` (5 s unless set) taken
        off its connections and applied by the adapter to every call instead, reads included
        (a blocking ``XREADGROUP`` gets ``block`` more). redis-py would run each send of a
        connection with a socket timeout in a task of its own (``asyncio.wait_for``): about a
        third of the CPU of a command, and on Python 3.11 that task can swallow a cancellation,
        which made a consumer's shutdown wait for its blocking read. A given ``client`` is
        used as it is.
        """
        if self._client is not None:
            return
        client = self._given_client
        if client is None:
            client = aioredis.Redis.from_url(self.url, **self._options)
            connection_kwargs = client.connection_pool.connection_kwargs
            self.socket_timeout = connection_kwargs.get("socket_timeout")
            connection_kwargs["socket_timeout"] = None
        try:
            async with self._io(f"connect to {self.url}"):
                await client.ping()
        except BaseException:
            if self._given_client is None:
                await client.aclose()
            raise
        self._client = client
        self.scripts = {name: client.register_script(text) for name, text in _SCRIPTS.items()}

    async def close(self) -> None:
        """Send what is queued, stop the delayed-retry mover, release the connections (if owned)."""
        if self._flusher is not None:
            await asyncio.wait([self._flusher])
        if self._mover is not None:
            self._mover.cancel()
            await asyncio.gather(self._mover, return_exceptions=True)
            self._mover = None
        client, self._client = self._client, None
        if client is not None and self._given_client is None:
            await client.aclose()

    def _io(
        self, action: str, error: type[EventBusError] = EventBusError, *, extra: float = 0.0
    ) -> _Io:
        """Bound a call by the socket timeout (plus ``extra`` seconds) and translate errors."""
        seconds = self.socket_timeout
        return _Io(None if seconds is None else seconds + extra, action, error)

    @property
    def redis(self) -> aioredis.Redis:
        """The connected client; raises :class:`~eventbus.errors.BusNotStarted` before connect."""
        if self._client is None:
            raise BusNotStarted("the redis broker is not connected; start the bus first")
        return self._client

    @property
    def dead_letters(self) -> RedisDeadLetters:
        return self._dead

    def pending(self) -> None:
        """Not known exactly on a network broker (``bus.drain()`` waits for idle handlers)."""
        return

    # ---------------------------------------------------------------- publishing
    async def publish(self, destination: str, envelope: Envelope) -> None:
        """``XADD`` the event; returns once Redis has replied to this very ``XADD``.

        At most one publish round trip is in flight at a time: publishes that arrive meanwhile
        (concurrent tasks) wait for it and then go out together, as one pipeline on one
        connection, and each caller is answered with its own reply. A lone publish is sent at
        once, so nothing waits for company.
        """
        redis = self.redis
        stream = self.keys.stream(destination)
        data = to_structured(envelope)
        if self._sending:
            future = asyncio.get_running_loop().create_future()
            self._queued.append(_QueuedPublish(stream, data, envelope.id, destination, future))
            await future
            return
        self._sending = True
        try:
            async with _timeout(self.socket_timeout):
                await redis.xadd(stream, _entry(data), maxlen=self.maxlen)
        except RedisError as exc:
            raise _translate(
                exc, f"publish {envelope.id} to {destination!r}", PublishError
            ) from exc
        except asyncio.TimeoutError as exc:
            action = f"publish {envelope.id} to {destination!r}"
            raise _timed_out(action, self.socket_timeout) from exc
        finally:
            self._round_trip_done()

    def _round_trip_done(self) -> None:
        """A publish round trip is over: send what queued up meanwhile, or go idle."""
        if self._queued:
            self._flusher = asyncio.get_running_loop().create_task(
                self._send_queued(), name="eventbus:redis-publish"
            )
        else:
            self._sending = False

    async def _send_queued(self) -> None:
        """Send the queued publishes, a pipeline at a time, until none are left."""
        try:
            while True:
                # Publishers cancelled while they waited are not sent at all.
                batch = [item for item in self._queued if not item.future.done()]
                self._queued = []
                if not batch:
                    return
                await self._send_pipeline(batch)
                await asyncio.sleep(0)  # let the publishers just answered queue their next ones
        except BaseException as exc:  # cancelled (or a bug): nobody may wait forever
            for item in self._queued:
                item.fail(exc)
            self._queued = []
            raise
        finally:
            self._sending = False
            self._flusher = None

    async def _send_pipeline(self, batch: list[_QueuedPublish]) -> None:
        try:
            pipe = self.redis.pipeline(transaction=False)
            for item in batch:
                pipe.xadd(item.stream, _entry(item.data), maxlen=self.maxlen)
            async with _timeout(self.socket_timeout):
                replies = await pipe.execute(raise_on_error=False)
        except (RedisError, asyncio.TimeoutError) as exc:  # the round trip failed: all in it did
            for item in batch:
                item.fail(exc, self.socket_timeout)
            return
        except asyncio.CancelledError as exc:  # nobody may wait forever
            for item in batch:
                item.fail(exc)
            raise
        except Exception as exc:  # closed meanwhile, or a bug
            for item in batch:
                item.fail(exc)
            log.warning("could not send %d queued publishes (%r)", len(batch), exc)
            return
        for item, reply in zip(batch, replies, strict=True):
            if isinstance(reply, Exception):
                item.fail(reply)
            elif not item.future.done():
                item.future.set_result(None)

    async def publish_batch(self, messages: Sequence[tuple[str, Envelope]]) -> None:
        """One pipelined round trip; on an error some events may have been published already."""
        pipe = self.redis.pipeline(transaction=False)
        for destination, envelope in messages:
            pipe.xadd(
                self.keys.stream(destination), _entry(to_structured(envelope)), maxlen=self.maxlen
            )
        async with self._io(f"publish a batch of {len(messages)} events", PublishError):
            await pipe.execute()

    async def send_raw(
        self,
        destination: str,
        body: bytes,
        headers: Mapping[str, Any] | None = None,
        key: str | None = None,
    ) -> None:
        """Add an entry as a foreign producer would: ``data`` = ``body``, headers as fields."""
        fields: dict[Any, Any] = {"data": body, **(headers or {})}
        if key is not None:
            fields["partitionkey"] = key
        async with self._io(f"send to {destination!r}", PublishError):
            await self.redis.xadd(self.keys.stream(destination), fields, maxlen=self.maxlen)

    # ---------------------------------------------------------------- consuming
    async def subscribe(self, subscription: SubscriptionView) -> RedisConsumer:
        if subscription.group is None:
            raise ValueError("subscription has no group; include it into a bus first")
        if subscription.is_pattern:
            raise ConfigurationError(
                f"{subscription.name} subscribes to the pattern {subscription.topic!r}, but Redis "
                "Streams has no topic routing; subscribe to each event type (destination) instead"
            )
        main = self.keys.stream(subscription.topic)
        retry = self.keys.retry(subscription.topic, subscription.group)
        await self.create_group(main, subscription.group, self.start_id)
        await self.create_group(retry, subscription.group, "0")  # private: read it all
        if self._mover is None:
            self._mover = asyncio.get_running_loop().create_task(
                self._move_delayed(), name="eventbus:redis-delayed"
            )
        return RedisConsumer(self, subscription, main, retry)

    async def create_group(self, stream: str, group: str, start_id: str) -> None:
        """``XGROUP CREATE ... MKSTREAM``; a group that exists already is left as it is."""
        try:
            async with self._io(f"create consumer group {group!r} on {stream!r}"):
                await self.redis.xgroup_create(stream, group, start_id, mkstream=True)
        except EventBusError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def wake_mover(self) -> None:
        self._wake_mover.set()

    async def _move_delayed(self) -> None:
        """Move due delayed retries back to their streams; sleeps until the next is due."""
        while True:
            self._wake_mover.clear()
            wait = self.delay_poll
            try:
                async with _timeout(self.socket_timeout):
                    moved, next_ms = await self.scripts["move"](
                        keys=[self.keys.delayed], args=[self.batch_size]
                    )
            except (RedisError, asyncio.TimeoutError) as exc:
                log.warning("could not move delayed retries (%s); trying again", exc)
            else:
                if moved >= self.batch_size:
                    wait = 0
                elif next_ms >= 0:
                    wait = min(wait, next_ms / 1000)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake_mover.wait(), wait)


def _check_options(options: Mapping[str, Any], block: float) -> None:
    """Refuse misspelt driver options now, instead of at the first command."""
    known = set(inspect.signature(aioredis.Redis.__init__).parameters) - {"self"}
    for name in options:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known | _ADAPTER_OPTIONS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigurationError(
                f"unknown redis:// option {name!r}{hint} (adapter options: "
                f"{', '.join(sorted(_ADAPTER_OPTIONS))}; others go to redis.asyncio.Redis)"
            )
    timeout = options.get("socket_timeout", 5.0)
    if timeout is not None and timeout <= block:
        raise ConfigurationError(
            f"socket_timeout={timeout} must be longer than block={block}, or every idle "
            "XREADGROUP times out; raise socket_timeout or lower block"
        )


class RedisConsumer:
    """One consumer, with a name of its own, in the subscription's group; reads both streams.

    Entries count as unsettled from the moment they are read. ``close`` releases those (requeued
    with the attempt they had), and any entry still pending under this consumer's name (a reply
    lost to a cancelled read), then removes the consumer from the group.

    A plain ack of a main-stream entry is a bare ``XACK`` (nothing has to happen atomically
    with it), and acks are batched: ``ack`` queues the entry id and returns. The task that
    reads sends everything queued in one ``XACK`` before its next read, so acks handled inline
    (``concurrency=1``) cost one command per batch read; an ack from another task (handlers
    running concurrently while the reader waits) starts a sender task that does the same at
    once. An entry is only acked after its handler, and one whose ``XACK`` does not arrive
    stays pending and is delivered again, as after any failed ack: nothing is lost. Every
    other settle is one script, awaited.
    """

    def __init__(
        self, broker: RedisBroker, subscription: SubscriptionView, main: str, retry: str
    ) -> None:
        self.broker = broker
        self.subscription = subscription
        self.group: str = subscription.group or ""
        self.name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.main, self.retry = main, retry
        self._unsettled: dict[tuple[str, str], RedisDelivery] = {}
        self._cursors = {main: "0-0", retry: "0-0"}
        self._next_claim = 0.0
        self._reread = False
        self._closed = False
        self._acks: list[str] = []  # main-stream entries handled, not XACKed yet
        self._acker: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[Any] | None = None  # the task iterating the deliveries

    def __aiter__(self) -> AsyncIterator[RedisDelivery]:
        return self._deliveries()

    async def _deliveries(self) -> AsyncIterator[RedisDelivery]:
        self._reader = asyncio.current_task()
        backoff = 0.05
        while not self._closed:
            _raise_if_cancelled()
            try:
                batch = await self._fetch()
            except BrokerUnavailable as exc:
                # Survive the outage; afterwards re-read what Redis may have handed us unseen.
                log.warning("%s: %s; reading again in %.2fs", self.name, exc, backoff)
                self._reread = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            except EventBusError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                log.warning("%s: group %r vanished (%s); recreating it", self.name, self.group, exc)
                for stream in (self.main, self.retry):  # a new stream: nothing was read from it
                    await self.broker.create_group(stream, self.group, "0")
                continue
            backoff = 0.05
            for delivery in batch:
                yield delivery

    async def _fetch(self) -> list[RedisDelivery]:
        if self._acks or self._acker is not None:
            await self._flush_acks()
        if self._reread:
            self._reread = False
            lost = [d for stream in (self.main, self.retry) for d in await self._claim_lost(stream)]
            if lost:
                return lost
        now = asyncio.get_running_loop().time()
        if now >= self._next_claim:
            claimed = await self._claim_abandoned()
            done = all(cursor in ("0-0", b"0-0") for cursor in self._cursors.values())
            self._next_claim = now + self.broker.claim_interval if done else now
            if claimed:
                return claimed
        broker = self.broker
        seconds = broker.socket_timeout
        if seconds is not None:
            seconds += broker.block_ms / 1000
        try:
            async with _timeout(seconds):
                response: Any = await broker.redis.xreadgroup(
                    self.group,
                    self.name,
                    {self.main: ">", self.retry: ">"},
                    count=broker.batch_size,
                    block=broker.block_ms,
                )
        except RedisError as exc:
            raise _translate(exc, f"read from {self.main!r} as {self.group!r}") from exc
        except asyncio.TimeoutError as exc:
            raise _timed_out(f"read from {self.main!r} as {self.group!r}", seconds) from exc
        items = response.items() if isinstance(response, dict) else (response or [])
        return [
            self._deliver(_text(stream), entry_id, fields, 1)
            for stream, entries in items
            for entry_id, fields in entries
            if fields is not None
        ]

    async def _claim_abandoned(self) -> list[RedisDelivery]:
        """``XAUTOCLAIM`` entries idle longer than ``claim_idle`` (their consumer is gone)."""
        out: list[RedisDelivery] = []
        for stream in (self.main, self.retry):
            async with self.broker._io(f"claim abandoned entries of {stream!r}"):
                claimed: Any = await self.broker.redis.xautoclaim(
                    stream,
                    self.group,
                    self.name,
                    self.broker.claim_idle_ms,
                    self._cursors[stream],
                    count=self.broker.batch_size,
                )
            next_id, entries = claimed[0], claimed[1]
            self._cursors[stream] = _text(next_id)
            fresh = [
                (i, f)
                for i, f in entries
                if f is not None and (stream, _text(i)) not in self._unsettled
            ]
            out += await self._with_counts(stream, fresh)
        return out

    async def _claim_lost(self, stream: str) -> list[RedisDelivery]:
        """Entries pending under this consumer's name that it holds no delivery for."""
        redis = self.broker.redis
        async with self.broker._io(f"read the pending entries of {stream!r}"):
            pending: Any = await redis.xpending_range(
                stream,
                self.group,
                "-",
                "+",
                len(self._unsettled) + 10 * self.broker.batch_size,
                consumername=self.name,
            )
            acked = set(self._acks) if stream == self.main else ()  # handled, XACK not sent
            ids = [
                p["message_id"]
                for p in pending
                if (stream, _text(p["message_id"])) not in self._unsettled
                and _text(p["message_id"]) not in acked
            ]
            if not ids:
                return []
            entries: Any = await redis.xclaim(stream, self.group, self.name, 0, ids)
        return await self._with_counts(stream, [(i, f) for i, f in entries if f is not None])

    async def _with_counts(
        self, stream: str, entries: list[tuple[Any, Any]]
    ) -> list[RedisDelivery]:
        """Deliveries for claimed entries, their attempts counted from Redis' delivery counts."""
        if not entries:
            return []
        async with self.broker._io(f"read delivery counts in {stream!r}"):
            pending = await self.broker.redis.xpending_range(
                stream,
                self.group,
                entries[0][0],
                entries[-1][0],
                len(entries) + len(self._unsettled),
                consumername=self.name,
            )
        counts = {_text(p["message_id"]): int(p["times_delivered"]) for p in pending}
        return [self._deliver(stream, i, f, counts.get(_text(i), 2)) for i, f in entries]

    def _deliver(self, stream: str, entry_id: Any, fields: Any, times: int) -> RedisDelivery:
        delivery = RedisDelivery(self, stream, _text(entry_id), fields, times)
        self._unsettled[(stream, delivery.entry_id)] = delivery
        return delivery

    async def settle(
        self, delivery: RedisDelivery, script: str, keys: list[str], args: list[Any]
    ) -> None:
        """Run one settle script for ``delivery``, once; a retry-stream entry is also deleted.

        A plain ack of a main-stream entry is queued for a batched ``XACK`` instead (see the
        class documentation).
        """
        stream, entry_id = delivery.stream, delivery.entry_id
        if (stream, entry_id) not in self._unsettled:
            return
        if stream == self.main:
            if script == "ack":
                del self._unsettled[(stream, entry_id)]
                self._acks.append(entry_id)
                if self._acker is None and asyncio.current_task() is not self._reader:
                    # The reader may be waiting in a blocking read: send it now, not after.
                    self._acker = asyncio.get_running_loop().create_task(
                        self._send_acks(), name=f"eventbus:redis-ack:{self.name}"
                    )
                return
            drop = "0"
        else:
            drop = "1"
        async with self.broker._io(f"{script} entry {entry_id} of {stream!r}"):
            await self.broker.scripts[script](
                keys=[stream, *keys], args=[self.group, entry_id, drop, *args]
            )
        self._unsettled.pop((stream, entry_id), None)  # only now: a failed settle may be retried

    def leave_pending(self, delivery: RedisDelivery) -> None:
        """Give up on settling ``delivery`` here: it stays pending in Redis and is read again
        with this consumer's other lost entries (the next read re-reads them)."""
        if self._unsettled.pop((delivery.stream, delivery.entry_id), None) is not None:
            self._reread = True

    async def _xack_queued(self) -> None:
        """``XACK`` every queued entry in one command.

        When Redis does not answer, the ids stay queued (sent again before the next read, and
        never taken for lost entries) and :class:`~eventbus.errors.BrokerUnavailable` is
        raised; when Redis refuses, they are dropped with a warning and stay pending.
        """
        ids, self._acks = self._acks, []
        action = f"acknowledge {len(ids)} entries of {self.main!r}"
        try:
            async with _timeout(self.broker.socket_timeout):
                await self.broker.redis.xack(self.main, self.group, *ids)
        except (RedisConnectionError, RedisTimeoutError, asyncio.TimeoutError) as exc:
            self._acks[:0] = ids
            if isinstance(exc, RedisError):
                raise _translate(exc, action) from exc
            raise _timed_out(action, self.broker.socket_timeout) from exc
        except RedisError as exc:
            log.warning("%s could not %s (%r); they are delivered again", self.name, action, exc)

    async def _send_acks(self) -> None:
        """The sender task: ``XACK`` what is queued until nothing is left (or Redis is away)."""
        try:
            while self._acks:
                await self._xack_queued()
        except EventBusError as exc:
            log.warning("%s: %s; sending the acks again before the next read", self.name, exc)
        finally:
            self._acker = None

    async def _flush_acks(self) -> None:
        """Send every queued ack now (raises :class:`BrokerUnavailable` if Redis is away)."""
        while self._acker is not None:
            await asyncio.wait([self._acker])
        if self._acks:
            await self._xack_queued()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._flush_acks()
            for delivery in list(self._unsettled.values()):
                await delivery.release()
            for stream in (self.main, self.retry):
                for delivery in await self._claim_lost(stream):
                    await delivery.release()
                async with self.broker._io(f"leave group {self.group!r}"):
                    await self.broker.redis.xgroup_delconsumer(stream, self.group, self.name)
        except EventBusError as exc:
            log.warning(
                "%s could not hand back its unsettled entries (%s); another consumer of %r "
                "reclaims them after claim_idle",
                self.name,
                exc,
                self.group,
            )


class RedisDelivery:
    """One stream entry: ``body`` is its ``data`` field, ``headers`` every other field."""

    __slots__ = (
        "_consumer",
        "attempt",
        "body",
        "decode_error",
        "entry_id",
        "envelope",
        "fields",
        "headers",
        "metadata",
        "stream",
    )

    def __init__(
        self,
        consumer: RedisConsumer,
        stream: str,
        entry_id: str,
        fields: Mapping[bytes, bytes],
        times_delivered: int,
    ) -> None:
        self._consumer = consumer
        self.stream = stream
        self.entry_id = entry_id
        self.fields = fields
        self.body: bytes = fields.get(b"data", b"")
        headers: dict[str, str | bytes] = {}
        metadata: dict[str, str] = {}
        carried = 1
        for raw_name, raw_value in fields.items():
            if raw_name == b"data":
                continue
            name, value = _text(raw_name), _value(raw_value)
            headers[name] = value
            if name.startswith(_CARRIED):
                if name == ATTEMPT:
                    try:
                        carried = int(value)
                    except (TypeError, ValueError):
                        carried = 1
                elif isinstance(value, str):
                    metadata[name[len(_CARRIED) :]] = value
        self.headers = headers
        self.attempt: int = max(1, carried) + max(0, times_delivered - 1)
        self.metadata = metadata
        self.envelope: Envelope | None
        self.decode_error: DecodeError | None = None
        key = headers.get("partitionkey")
        try:
            if headers.get("content-type") == STRUCTURED_CONTENT_TYPE:  # what eventbus writes
                self.envelope = from_structured(self.body, key=key)
            else:
                self.envelope = decode(headers, self.body, key=key)
        except DecodeError as exc:
            self.envelope, self.decode_error = None, exc

    @property
    def destination(self) -> str:
        return self._consumer.subscription.topic

    def _carried(self, attempt: int) -> list[Any]:
        """The fields of a redelivery: the original ones, the next attempt, the metadata."""
        out: list[Any] = []
        for name, value in self.fields.items():
            if not name.startswith(b"eventbus-"):
                out += [name, value]
        out += [ATTEMPT, str(attempt)]
        for key, text in self.metadata.items():
            out += [_CARRIED + key, text]
        return out

    async def ack(self) -> None:
        await self._consumer.settle(self, "ack", [], [])

    async def nack(self) -> None:
        retry = self._consumer.retry
        await self._consumer.settle(self, "requeue", [retry], self._carried(self.attempt + 1))

    async def release(self) -> None:
        """Requeued to the group's retry stream with the attempt it had: not counted.

        When Redis cannot be reached the entry stays pending, and the consumer claims it back
        on its next read (counted then, as any redelivery of a pending entry).
        """
        retry = self._consumer.retry
        try:
            await self._consumer.settle(self, "requeue", [retry], self._carried(self.attempt))
        except EventBusError as exc:
            log.warning(
                "%s: %s; %s stays pending and is read again",
                self._consumer.name,
                exc,
                self.entry_id,
            )
            self._consumer.leave_pending(self)

    async def retry_later(self, delay: float) -> None:
        consumer = self._consumer
        args = [int(delay * 1000), consumer.retry, *self._carried(self.attempt + 1)]
        await consumer.settle(self, "delay", [consumer.broker.keys.delayed], args)
        consumer.broker.wake_mover()

    async def dead_letter(self, record: DeadLetterRecord) -> None:
        from eventbus.brokers.redis_deadletters import dlq_fields

        consumer = self._consumer
        keys = consumer.broker.keys
        await consumer.settle(
            self,
            "dead",
            [keys.dlq(consumer.group), keys.dlq_index],
            [record.id, *dlq_fields(record)],
        )


def _raise_if_cancelled() -> None:
    """Honour a cancellation that a blocking read swallowed.

    redis-py 8.1 on Python 3.11 sometimes lets a ``Task.cancel()`` that races with a blocking
    ``XREADGROUP`` vanish: the task is marked as cancelling but the read loop goes on, and
    shutdown would wait forever. Checking between reads bounds that to one ``block``.
    """
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)  # Python 3.11+
    if cancelling is not None and cancelling():
        raise asyncio.CancelledError


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _value(value: bytes) -> str | bytes:
    """A field value as text, or the bytes themselves when they are not UTF-8."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value


def from_url(url: str, **options: Any) -> RedisBroker:
    """``redis://[[user]:password@]host[:port][/db]`` or ``rediss://`` (TLS).

    The URL, its ``?query`` options and every keyword that is not an adapter option go to
    ``redis.asyncio.Redis.from_url``.
    """
    return RedisBroker(url, **options)
