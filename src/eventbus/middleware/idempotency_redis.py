"""``RedisIdempotencyStore``: idempotency claims in Redis, shared by every consumer process.

One key per (group, event id). Claiming is ``SET key lease:<owner> NX PX <lease>`` — atomic, and
the lease expires on the server's clock, so a consumer that died holding it cannot block the
event for longer than the lease. Done is ``SET key done<result> PX <retention>``. Release is a Lua
compare-and-delete: only the owner of the lease may release it. Claim and the look-up that
explains a refused claim run in one script, so there is no gap between them.

Needs ``pip install "eventbus[redis]"``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from eventbus.errors import ConfigurationError, TransientError
from eventbus.middleware.idempotency import Claim, ClaimStatus

try:
    import redis.asyncio as aioredis
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import RedisError
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ConfigurationError(
        'RedisIdempotencyStore needs the redis driver: pip install "eventbus[redis]"'
    ) from exc

__all__ = ["RedisIdempotencyStore"]

_DONE = b"done"

# KEYS[1] key; ARGV[1] lease value, ARGV[2] lease ms
# -> {1, 0} acquired | {2, 0, result} done | {3, pttl} busy
_CLAIM = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return {1, 0} end
local value = redis.call('GET', KEYS[1])
if value and string.sub(value, 1, 4) == 'done' then return {2, 0, string.sub(value, 5)} end
return {3, redis.call('PTTL', KEYS[1])}
"""

# KEYS[1] key; ARGV[1] the lease value the caller set -> 1 released | 0 not the owner
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisIdempotencyStore:
    """Claims as Redis keys ``{prefix}{len(group)}:{group}:{event_id}`` with TTLs.

    ``redis`` is a URL (the store then owns the client; ``close()`` it) or a ready
    ``redis.asyncio.Redis`` client. Connection failures raise
    :class:`~eventbus.errors.TransientError`, so the delivery is retried.
    """

    def __init__(self, redis: str | aioredis.Redis, *, prefix: str = "eventbus:idempotency:"):
        if isinstance(redis, str):
            self._client: aioredis.Redis = aioredis.Redis.from_url(redis)
            self._owns_client = True
        else:
            self._client, self._owns_client = redis, False
        self.prefix = prefix
        self._claim = self._client.register_script(_CLAIM)
        self._release = self._client.register_script(_RELEASE)

    def key(self, group: str, event_id: str) -> str:
        """The Redis key of a claim; the length prefix keeps ``group`` and id unambiguous."""
        return f"{self.prefix}{len(group)}:{group}:{event_id}"

    async def claim(self, group: str, event_id: str, *, owner: str, lease: float) -> Claim:
        async with _mapped_errors():
            result: Any = await self._claim(
                keys=[self.key(group, event_id)], args=[f"lease:{owner}", _ms(lease)]
            )
        code, ttl_ms = int(result[0]), int(result[1])
        if code == 1:
            return Claim(ClaimStatus.ACQUIRED)
        if code == 2:
            stored = result[2] if len(result) > 2 else b""
            stored = stored.encode() if isinstance(stored, str) else stored
            return Claim(ClaimStatus.DONE, result=stored or None)
        return Claim(ClaimStatus.BUSY, max(ttl_ms, 1) / 1000)

    async def complete(
        self,
        group: str,
        event_id: str,
        *,
        owner: str,
        retention: float,
        result: bytes | None = None,
    ) -> None:
        async with _mapped_errors():
            value = _DONE + (result or b"")
            await self._client.set(self.key(group, event_id), value, px=_ms(retention))

    async def release(self, group: str, event_id: str, *, owner: str) -> None:
        async with _mapped_errors():
            await self._release(keys=[self.key(group, event_id)], args=[f"lease:{owner}"])

    async def close(self) -> None:
        """Close the client if this store created it from a URL."""
        if self._owns_client:
            await self._client.aclose()

    def __repr__(self) -> str:
        return f"RedisIdempotencyStore(prefix={self.prefix!r})"


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


@contextlib.asynccontextmanager
async def _mapped_errors() -> AsyncIterator[None]:
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError) as exc:
        raise TransientError(
            f"the Redis idempotency store is unreachable ({exc}); the delivery will be retried"
        ) from exc
    except RedisError as exc:
        raise TransientError(f"the Redis idempotency store failed: {exc}") from exc
