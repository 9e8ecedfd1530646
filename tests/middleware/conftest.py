"""Fixtures for the reliability-middleware tests: contexts, fake time and real stores.

Server fixtures connect with a short timeout. When a server is unreachable they fail under
``CI=true`` (nothing that needs a server is skipped in CI) and skip otherwise, naming
``scripts/services start``. Every test gets its own key prefix or table.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from eventbus import Context, Envelope, EventBus, Router, Subscription
from tests.middleware.mwsupport import MakeContext, RecordingClock

REDIS_URL = os.environ.get("EVENTBUS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get(
    "EVENTBUS_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres:postgres@127.0.0.1:5432/eventbus"
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


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
            envelope=envelope, subscription=sub or subscription, bus=bus, attempt=attempt
        )

    return make


def _unreachable(what: str, exc: BaseException) -> NoReturn:
    message = (
        f"{what} is unreachable ({type(exc).__name__}: {exc}); start it with "
        "`scripts/services start` (or set the EVENTBUS_TEST_*_URL variables)"
    )
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=5)
    try:
        await client.ping()
    except (OSError, aioredis.RedisError) as exc:
        await client.aclose()
        _unreachable(f"Redis at {REDIS_URL}", exc)
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
async def postgres_engine() -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(POSTGRES_URL, connect_args={"timeout": 3})
    try:
        async with engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
    except (OSError, sa.exc.SQLAlchemyError) as exc:
        await engine.dispose()
        _unreachable(f"PostgreSQL at {POSTGRES_URL}", exc)
    yield engine
    await engine.dispose()


@pytest.fixture
def table_name() -> str:
    return f"eventbus_idem_{uuid.uuid4().hex[:12]}"
