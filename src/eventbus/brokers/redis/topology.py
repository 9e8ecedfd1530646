"""Where the adapter keeps things in Redis, and the options that decide how.

Key names (``prefix`` defaults to ``eventbus:``; ``~`` cannot occur in a destination, so the
keys of different destinations and groups never collide):

* ``{prefix}{destination}`` — the stream events are published to. Every subscription is a
  consumer group on it, created at subscribe time with ``MKSTREAM``; a brand-new group starts
  at ``$`` (only events published from now on, like Kafka's ``latest``) unless
  ``start_from="earliest"``.
* ``{prefix}{destination}~retry~{group}`` — the group's private stream for redeliveries
  (nack, release, delayed retries, replayed dead letters), so a retry in one group is never
  seen by the others; its group always starts at ``0``.
* ``{prefix}~delayed`` — a sorted set of copies waiting for ``retry_later``, scored by due
  time on the Redis clock.
* ``{prefix}~dlq~{group}`` — the group's dead-letter stream, indexed by
  ``{prefix}~dlq-index`` (dead-letter id → ``"<entry id> <stream>"``).

The options are checked when the adapter is constructed, so that a misspelt or impossible one
fails there and not at the first command.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from eventbus.errors import ConfigurationError
from eventbus.types import SubscriptionView

__all__ = [
    "ADAPTER_OPTIONS",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_SOCKET_TIMEOUT",
    "Keys",
    "Settings",
    "checked_group",
    "driver_options",
    "settings",
]

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""Redis takes values up to 512 MB, but every stream entry stays in the server's memory until it
is trimmed, and a large one stalls the connection it travels on: 16 MiB is a sensible bound."""

DEFAULT_SOCKET_TIMEOUT = 5.0
"""redis-py's ``socket_timeout`` when neither the options nor the URL set one; the adapter
bounds its calls with it (``redis.asyncio.Redis.from_url`` leaves it to the connection class,
so it does not appear in the pool's connection options)."""

ADAPTER_OPTIONS = frozenset(
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
        "max_message_bytes",
    )
)
"""The keyword arguments the adapter takes itself; every other one goes to redis-py."""


@dataclasses.dataclass(frozen=True)
class Keys:
    """The names of every key the adapter writes (see the module documentation)."""

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


@dataclasses.dataclass(frozen=True)
class Settings:
    """The adapter's own options, checked, in the units Redis takes them."""

    keys: Keys
    maxlen: int | None
    """``XADD MAXLEN ~`` of destination streams, or None to keep every entry."""
    start_id: str
    """Where a new group on a destination stream starts: ``$`` or ``0``."""
    batch_size: int
    block_ms: int
    claim_idle_ms: int
    claim_interval: float
    delay_poll: float


def settings(
    *,
    prefix: str,
    maxlen: int | None,
    start_from: str,
    batch_size: int,
    block: float,
    claim_idle: float,
    claim_interval: float,
    delay_poll: float,
) -> Settings:
    """The adapter's options checked; a :class:`ConfigurationError` names the one that is wrong."""
    if start_from not in ("latest", "earliest"):
        raise ConfigurationError(f"start_from must be 'latest' or 'earliest', not {start_from!r}")
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
    return Settings(
        keys=Keys(prefix),
        maxlen=maxlen,
        start_id="$" if start_from == "latest" else "0",
        batch_size=batch_size,
        block_ms=int(block * 1000),
        claim_idle_ms=int(claim_idle * 1000),
        claim_interval=claim_interval,
        delay_poll=delay_poll,
    )


def driver_options(options: Mapping[str, Any], block: float) -> dict[str, Any]:
    """The keyword arguments for ``redis.asyncio.Redis.from_url``: ``options`` checked, with the
    adapter's reconnection defaults where they say nothing.

    A misspelt option is refused now instead of at the first command, and so is a
    ``socket_timeout`` that an idle blocking read would always outlast. Unless told otherwise,
    redis-py retries every command with backoff across a dropped connection or a restart.
    """
    known = set(inspect.signature(aioredis.Redis.__init__).parameters) - {"self"}
    for name in options:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known | ADAPTER_OPTIONS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigurationError(
                f"unknown redis:// option {name!r}{hint} (adapter options: "
                f"{', '.join(sorted(ADAPTER_OPTIONS))}; others go to redis.asyncio.Redis)"
            )
    timeout = options.get("socket_timeout", DEFAULT_SOCKET_TIMEOUT)
    if timeout is not None and timeout <= block:
        raise ConfigurationError(
            f"socket_timeout={timeout} must be longer than block={block}, or every idle "
            "XREADGROUP times out; raise socket_timeout or lower block"
        )
    checked = dict(options)
    checked.setdefault("retry", Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=6))
    checked.setdefault("retry_on_error", [RedisConnectionError, RedisTimeoutError])
    return checked


def checked_group(subscription: SubscriptionView) -> str:
    """The subscription's group; a pattern is refused (Redis has no topic routing)."""
    if subscription.group is None:
        raise ValueError("subscription has no group; include it into a bus first")
    if subscription.is_pattern:
        raise ConfigurationError(
            f"{subscription.name} subscribes to the pattern {subscription.topic!r}, but Redis "
            "Streams has no topic routing; subscribe to each event type (destination) instead"
        )
    return subscription.group
