"""The IdempotencyStore contract, run against every store: memory, SQLite, PostgreSQL, Redis.

SQLite runs on a temporary file; PostgreSQL and Redis against the real servers that
``scripts/services start`` runs. Memory and SQL stores take an injectable clock; Redis keeps
time itself, so its expiry is forced with ``PEXPIRE`` and awaited with a deadline.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from eventbus.clock import FakeClock
from eventbus.errors import TransientError
from eventbus.middleware import (
    ClaimStatus,
    IdempotencyStore,
    MemoryIdempotencyStore,
    TransactionalIdempotencyStore,
)
from eventbus.middleware.idempotency_redis import RedisIdempotencyStore
from eventbus.middleware.idempotency_sql import SqlIdempotencyStore

pytestmark = pytest.mark.anyio


@dataclasses.dataclass
class Case:
    store: IdempotencyStore
    expire: Callable[[str, str], Awaitable[None]]
    """Make the key's lease or retention run out now."""


class Wall:
    """A settable wall clock for the SQL store."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def memory_case() -> Case:
    clock = FakeClock()

    async def expire(group: str, event_id: str) -> None:
        await clock.advance(10**7)

    return Case(MemoryIdempotencyStore(clock=clock), expire)


async def _sql_case(engine: AsyncEngine, table: str) -> AsyncIterator[Case]:
    wall = Wall()
    store = SqlIdempotencyStore(engine, table=table, now=wall)
    await store.create_table()
    await store.create_table()  # idempotent

    async def expire(group: str, event_id: str) -> None:
        wall.now += 10**7

    try:
        yield Case(store, expire)
    finally:
        async with engine.begin() as conn:
            await conn.run_sync(store.table.drop)


@pytest.fixture
async def sqlite_case(tmp_path: Path, table_name: str) -> AsyncIterator[Case]:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'idem.db'}")
    try:
        async for value in _sql_case(engine, table_name):
            yield value
    finally:
        await engine.dispose()


@pytest.fixture
async def postgres_case(postgres_engine: AsyncEngine, table_name: str) -> AsyncIterator[Case]:
    async for value in _sql_case(postgres_engine, table_name):
        yield value


@pytest.fixture
async def redis_case(redis_client: aioredis.Redis, redis_prefix: str, redis_cleanup: None) -> Case:
    store = RedisIdempotencyStore(redis_client, prefix=redis_prefix)

    async def expire(group: str, event_id: str) -> None:
        key = store.key(group, event_id)
        await redis_client.pexpire(key, 1)
        deadline = time.monotonic() + 5
        while await redis_client.exists(key):  # Redis expires the key on its own clock
            assert time.monotonic() < deadline, "Redis did not expire the key"
            await asyncio.sleep(0.005)

    return Case(store, expire)


@pytest.fixture(
    params=[
        "memory",
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("redis", marks=pytest.mark.redis),
    ]
)
def case(request: pytest.FixtureRequest) -> Case:
    """The store under test; a sync fixture so that it may pick an async one by name."""
    value = request.getfixturevalue(f"{request.param}_case")
    assert isinstance(value, Case)
    return value


async def test_first_claim_wins_then_busy_until_released(case: Case) -> None:
    store = case.store
    assert (await store.claim("g", "e1", owner="a", lease=30)).status is ClaimStatus.ACQUIRED
    busy = await store.claim("g", "e1", owner="b", lease=30)
    assert busy.status is ClaimStatus.BUSY
    assert 0 < busy.retry_after <= 30
    await store.release("g", "e1", owner="a")
    assert (await store.claim("g", "e1", owner="b", lease=30)).status is ClaimStatus.ACQUIRED


async def test_only_the_lease_owner_can_release(case: Case) -> None:
    store = case.store
    await store.claim("g", "e1", owner="a", lease=30)
    await store.release("g", "e1", owner="intruder")
    assert (await store.claim("g", "e1", owner="b", lease=30)).status is ClaimStatus.BUSY


async def test_done_is_reported_and_release_cannot_undo_it(case: Case) -> None:
    store = case.store
    await store.claim("g", "e1", owner="a", lease=30)
    await store.complete("g", "e1", owner="a", retention=3600)
    await store.release("g", "e1", owner="a")
    assert (await store.claim("g", "e1", owner="b", lease=30)).status is ClaimStatus.DONE
    assert (await store.claim("other", "e1", owner="b", lease=30)).status is ClaimStatus.ACQUIRED


async def test_an_expired_lease_is_taken_over_and_the_old_owner_cannot_release_it(
    case: Case,
) -> None:
    store = case.store
    await store.claim("g", "e1", owner="crashed", lease=30)
    await case.expire("g", "e1")
    assert (await store.claim("g", "e1", owner="b", lease=30)).status is ClaimStatus.ACQUIRED
    await store.release("g", "e1", owner="crashed")
    assert (await store.claim("g", "e1", owner="c", lease=30)).status is ClaimStatus.BUSY


async def test_done_is_forgotten_after_the_retention(case: Case) -> None:
    store = case.store
    await store.claim("g", "e1", owner="a", lease=30)
    await store.complete("g", "e1", owner="a", retention=3600)
    await case.expire("g", "e1")
    assert (await store.claim("g", "e1", owner="b", lease=30)).status is ClaimStatus.ACQUIRED


async def test_concurrent_claims_have_exactly_one_winner(case: Case) -> None:
    claims = await asyncio.gather(
        *(case.store.claim("g", "race", owner=f"o{n}", lease=30) for n in range(8))
    )
    statuses = [c.status for c in claims]
    assert statuses.count(ClaimStatus.ACQUIRED) == 1
    assert statuses.count(ClaimStatus.BUSY) == 7


async def test_unusual_groups_and_ids_do_not_collide(case: Case) -> None:
    store = case.store
    await store.claim("a:b", "c", owner="x", lease=30)
    assert (await store.claim("a", "b:c", owner="y", lease=30)).status is ClaimStatus.ACQUIRED


@pytest.mark.redis
async def test_redis_sets_server_side_ttls(
    redis_client: aioredis.Redis, redis_prefix: str, redis_cleanup: None
) -> None:
    store = RedisIdempotencyStore(redis_client, prefix=redis_prefix)
    await store.claim("g", "e1", owner="a", lease=30)
    assert 0 < await redis_client.pttl(store.key("g", "e1")) <= 30_000
    await store.complete("g", "e1", owner="a", retention=3600)
    assert 30_000 < await redis_client.pttl(store.key("g", "e1")) <= 3_600_000


async def test_redis_unreachable_is_a_transient_error() -> None:
    store = RedisIdempotencyStore("redis://127.0.0.1:1/0")
    with pytest.raises(TransientError, match="unreachable"):
        await store.claim("g", "e", owner="o", lease=1)
    await store.close()


async def test_sql_delete_expired_and_owned_engine(tmp_path: Path) -> None:
    wall = Wall()
    store = SqlIdempotencyStore(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", now=wall)
    await store.create_table()
    await store.complete("g", "old", owner="a", retention=10)
    await store.complete("g", "new", owner="a", retention=1000)
    wall.now += 100
    assert await store.delete_expired() == 1
    assert (await store.claim("g", "new", owner="b", lease=5)).status is ClaimStatus.DONE
    await store.close()


async def test_a_done_key_returns_the_result_it_was_completed_with(case: Case) -> None:
    store = case.store
    await store.claim("g", "with", owner="a", lease=30)
    await store.complete("g", "with", owner="a", retention=3600, result=b'{"status": 201}\x00\xff')
    done = await store.claim("g", "with", owner="b", lease=30)
    assert done.status is ClaimStatus.DONE
    assert done.result == b'{"status": 201}\x00\xff'
    await store.claim("g", "without", owner="a", lease=30)
    await store.complete("g", "without", owner="a", retention=3600)
    assert (await store.claim("g", "without", owner="b", lease=30)).result is None
    assert (await store.claim("g", "fresh", owner="b", lease=30)).result is None


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def sql_case(request: pytest.FixtureRequest) -> tuple[str, Case]:
    value = request.getfixturevalue(f"{request.param}_case")
    assert isinstance(value, Case)
    return request.param, value


@pytest.mark.parametrize("commit", [True, False])
async def test_sql_complete_in_commits_and_rolls_back_with_the_session(
    sql_case: tuple[str, Case], commit: bool
) -> None:
    store = sql_case[1].store
    assert isinstance(store, TransactionalIdempotencyStore)
    assert isinstance(store, SqlIdempotencyStore)
    await store.claim("g", "k", owner="a", lease=30)
    async with AsyncSession(store.engine) as session, session.begin():
        await store.complete_in(session, "g", "k", owner="a", retention=60, result=b"r")
        if not commit:
            await session.rollback()
    after = await store.claim("g", "k", owner="c", lease=30)
    if commit:
        assert (after.status, after.result) == (ClaimStatus.DONE, b"r")
    else:
        assert after.status is ClaimStatus.BUSY  # still a's lease: the marker rolled back
    assert not isinstance(MemoryIdempotencyStore(), TransactionalIdempotencyStore)
