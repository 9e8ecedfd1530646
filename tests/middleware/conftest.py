"""Fixtures for the reliability-middleware tests: contexts, fake time and real stores.

Server fixtures take their URLs from ``redis_url`` / ``postgres_url`` in ``tests/conftest.py``,
which fail under ``CI=true`` and skip elsewhere when the server is missing. Every test gets its
own key prefix or table.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from eventbus import Context, Envelope, EventBus, Router
from eventbus.router import Subscription
from tests.middleware.mwsupport import MakeContext, RecordingClock


@pytest.fixture
def clock() -> RecordingClock:
    """A FakeClock that also records the sleeps asked of it."""
    return RecordingClock()


async def _noop(envelope: Envelope) -> None:
    """The handler behind contexts built by ``make_ctx``; middleware tests never reach it."""


@pytest.fixture
def subscription() -> Subscription:
    router = Router()
    router.subscribe("OrderPlaced", group="billing")(_noop)
    return router.subscriptions[0]


@pytest.fixture
def make_ctx(clock: RecordingClock, subscription: Subscription) -> MakeContext:
    """``make_ctx(attempt=1, subscription=...)``: a Context on a bus whose broker uses ``clock``."""
    bus = EventBus("memory://", service="test", clock=clock, middleware=())

    def make(attempt: int = 1, sub: Subscription | None = None, event_id: str = "e-1") -> Context:
        envelope = Envelope(id=event_id, type="OrderPlaced", source="test", data=b"{}")
        return Context(
            envelope=envelope,
            subscription=sub or subscription,
            bus=bus,
            attempt=attempt,
            clock=clock,
        )

    return make


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=5)
    yield client
    await client.aclose()


@pytest.fixture
def redis_prefix() -> str:
    return f"eventbus-test:{uuid.uuid4().hex}:"


@pytest.fixture
async def redis_cleanup(redis_client: aioredis.Redis, redis_prefix: str) -> AsyncIterator[None]:
    yield
    keys: list[Any] = [key async for key in redis_client.scan_iter(f"{redis_prefix}*")]
    if keys:
        await redis_client.delete(*keys)


@pytest.fixture
async def postgres_engine(postgres_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(postgres_url, connect_args={"timeout": 3})
    yield engine
    await engine.dispose()


@pytest.fixture
def table_name() -> str:
    return f"eventbus_idem_{uuid.uuid4().hex[:12]}"
