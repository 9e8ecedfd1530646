"""Redis test helpers: every test works under a fresh key prefix, deleted afterwards."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import redis.asyncio as aioredis


async def delete_prefix(url: str, prefix: str) -> None:
    """Delete every key under ``prefix`` (streams, retry streams, idempotency keys)."""
    client = aioredis.Redis.from_url(url)
    async with client:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=500)]
        if keys:
            await client.delete(*keys)


async def fresh_prefix(url: str) -> AsyncIterator[str]:
    """A fresh ``ebtest:<random>:`` prefix for one test's keys, deleted afterwards."""
    name = f"ebtest:{uuid.uuid4().hex[:10]}:"
    yield name
    await delete_prefix(url, name)
