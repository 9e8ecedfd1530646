"""The adapter's link to Redis: the client, its scripts, and every call bounded and translated.

**Errors.** :func:`translate` is the adapter's edge: it maps a redis-py exception to the
:mod:`eventbus.errors` error that says what to do (a connection or timeout error is
:class:`~eventbus.errors.BrokerUnavailable`, anything Redis refuses an
:class:`~eventbus.errors.EventBusError`, a :class:`~eventbus.errors.PublishError` when
publishing). It is applied through :class:`~eventbus.brokers._wire.DriverErrors`
(:data:`ERRORS`, :data:`PUBLISH_ERRORS`) in :class:`Call`, the one wrapper of a driver call;
the hot paths (publishing, reading, acking) catch for themselves and map with
:func:`failure`, the same mapping without the wrapper's cost.

**Timeouts.** On a client it creates, the adapter takes redis-py's ``socket_timeout`` off the
connections and bounds every call with it itself (``asyncio.timeout`` in the calling task):
redis-py would run each send of a connection with a socket timeout in a task of its own
(``asyncio.wait_for``), about a third of the CPU of a command, and on Python 3.11 that task
can swallow a cancellation, which made a consumer's shutdown wait for its blocking read. A
call that Redis does not answer in time fails with ``BrokerUnavailable``.
"""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from eventbus.brokers._wire import DriverErrors
from eventbus.brokers.redis.packing import pack_with_hiredis
from eventbus.brokers.redis.scripts import register
from eventbus.brokers.redis.topology import DEFAULT_SOCKET_TIMEOUT
from eventbus.errors import (
    BrokerUnavailable,
    BusNotStarted,
    ConfigurationError,
    EventBusError,
    PublishError,
)
from eventbus.redact import redact_url

if sys.version_info >= (3, 11):
    from asyncio import timeout
else:  # pragma: no cover - redis-py depends on async-timeout there
    from async_timeout import timeout

__all__ = [
    "ERRORS",
    "PUBLISH_ERRORS",
    "Call",
    "Link",
    "failure",
    "timed_out",
    "timeout",
    "translate",
]


def translate(
    exc: Exception, what: str, refused: type[EventBusError] = EventBusError
) -> EventBusError | None:
    """A redis-py exception as the eventbus error that says what to do; None for any other.

    ``refused`` is the error for a command Redis answered with an error.
    """
    if isinstance(exc, (RedisConnectionError, RedisTimeoutError)):
        return BrokerUnavailable(
            f"could not {what}: Redis did not answer ({exc}); check that the server is up "
            "and the URL is right (the operation may be retried)"
        )
    if isinstance(exc, RedisError):
        return refused(f"could not {what}: Redis refused it ({exc})")
    return None


ERRORS = DriverErrors(translate)
PUBLISH_ERRORS = DriverErrors(functools.partial(translate, refused=PublishError))


def timed_out(what: str, seconds: float | None) -> BrokerUnavailable:
    return BrokerUnavailable(
        f"could not {what}: Redis did not answer within {seconds}s (socket_timeout); check "
        "that the server is up and the URL is right (the operation may be retried)"
    )


def failure(
    exc: Exception, what: str, seconds: float | None, errors: DriverErrors = ERRORS
) -> EventBusError | None:
    """The error to raise for ``exc`` from a call bounded by ``seconds``; None lets it through."""
    if isinstance(exc, asyncio.TimeoutError):
        error: EventBusError | None = timed_out(what, seconds)
    else:
        error = errors.error(exc, what)
    if error is not None:
        error.__cause__ = exc
    return error


class Call:
    """``async with``: one Redis call, bounded by ``seconds``, with its errors translated."""

    __slots__ = ("_edge", "_scope", "_seconds", "_what")

    def __init__(self, seconds: float | None, what: str, errors: DriverErrors) -> None:
        self._seconds = seconds
        self._what = what
        self._edge = errors(what)

    async def __aenter__(self) -> None:
        self._scope = timeout(self._seconds)
        await self._scope.__aenter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self._scope.__aexit__(exc_type, exc, tb)
        except asyncio.TimeoutError as exceeded:
            raise timed_out(self._what, self._seconds) from exceeded
        self._edge.__exit__(exc_type, exc, tb)


class Link:
    """The client once connected, its scripts, and the bound of every call the adapter makes."""

    def __init__(self) -> None:
        self._client: aioredis.Redis | None = None
        self.scripts: dict[str, AsyncScript] = {}
        self.socket_timeout: float | None = None
        """Bound of every call (redis-py's ``socket_timeout``; see the module documentation)."""

    @property
    def redis(self) -> aioredis.Redis:
        """The connected client; raises :class:`~eventbus.errors.BusNotStarted` before connect."""
        if self._client is None:
            raise BusNotStarted("the redis broker is not connected; start the bus first")
        return self._client

    def call(self, what: str, errors: DriverErrors = ERRORS, *, extra: float = 0.0) -> Call:
        """Bound a call by the socket timeout (plus ``extra`` seconds) and translate its errors."""
        seconds = self.socket_timeout
        return Call(None if seconds is None else seconds + extra, what, errors)

    async def open(
        self, url: str, options: Mapping[str, Any], given: aioredis.Redis | None
    ) -> None:
        """Connect (``given``, or a client made from ``url`` and ``options``) and check that
        Redis answers; a client made here gets its ``socket_timeout`` moved to the adapter."""
        if self._client is not None:
            return
        client = given
        if client is None:
            try:
                client = aioredis.Redis.from_url(url, **options)
            except (ValueError, TypeError) as exc:  # a port that is not a number, an unknown option
                raise ConfigurationError(
                    f"cannot connect to {redact_url(url)}: {exc}; see "
                    "https://redis.readthedocs.io/en/stable/connections.html for the URL format"
                ) from exc
            connection_kwargs = client.connection_pool.connection_kwargs
            self.socket_timeout = connection_kwargs.get("socket_timeout", DEFAULT_SOCKET_TIMEOUT)
            connection_kwargs["socket_timeout"] = None
            pack_with_hiredis(client)
        try:
            async with self.call(f"connect to {redact_url(url)}"):
                await client.ping()
        except BaseException:
            if given is None:
                await client.aclose()
            raise
        self._client = client
        self.scripts = register(client)

    async def close(self, *, owned: bool) -> None:
        """Forget the client; close its connections if the adapter made it (``owned``)."""
        client, self._client = self._client, None
        if client is not None and owned:
            await client.aclose()

    async def create_group(self, stream: str, group: str, start_id: str) -> None:
        """``XGROUP CREATE ... MKSTREAM``; a group that exists already is left as it is."""
        try:
            async with self.call(f"create consumer group {group!r} on {stream!r}"):
                await self.redis.xgroup_create(stream, group, start_id, mkstream=True)
        except EventBusError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def group_lag(self, streams: tuple[str, ...], group: str) -> int | None:
        """Entries of ``streams`` that ``group`` has not acknowledged: not yet read (``lag``)
        plus read and pending (``XINFO GROUPS``); None when Redis cannot tell (a stream or
        the group is missing, or a trimmed stream leaves ``lag`` unknown)."""
        total = 0
        async with self.call(f"read the lag of group {group!r}"):
            pipe = self.redis.pipeline(transaction=False)
            for stream in streams:
                pipe.xinfo_groups(stream)
            replies = await pipe.execute(raise_on_error=False)
        for reply in replies:
            if isinstance(reply, Exception):  # "no such key": the stream is gone
                return None
            info = next((i for i in reply if _text(i.get("name")) == group), None)
            if info is None or info.get("lag") is None:
                return None
            total += int(info["lag"]) + int(info.get("pending") or 0)
        return total


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
