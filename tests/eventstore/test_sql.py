"""The SQL store beyond the contract: the global feed never passes an append that commits
late, appends in the caller's transaction, and the tables."""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from eventbus import ConcurrencyError, ConfigurationError
from eventbus.eventstore import EventStore, StoredEvent
from eventbus.testing import wait_until
from eventbus.testing._eventstore_base import Opened, opened
from tests.eventstore.conftest import drop, new_store

pytestmark = pytest.mark.anyio


async def feed(store: EventStore, after: int = 0) -> list[StoredEvent]:
    return [record async for record in store.read_all(after)]


async def appends_waiting_for_the_lock(engine: AsyncEngine, store: EventStore) -> bool:
    classid, objid = store.lock_key
    query = sa.text(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        " AND classid = :classid AND objid = :objid"
    )
    async with engine.connect() as connection:
        waiting = await connection.execute(query, {"classid": classid, "objid": objid})
        return bool(waiting.scalar())


async def test_an_append_that_commits_after_a_later_one_is_not_skipped(
    engine: AsyncEngine, store: EventStore
) -> None:
    """The bug every SQL event store has had: an append takes position p and commits late,
    a later append takes p + 1 and commits first, a reader reads p + 1 and, resuming after
    it, never sees p. Here the later append cannot take a position before the slow one has
    committed: the reader, resuming from where it was, gets both, in commit order."""
    await store.append("before", opened(0), expected_version=0)
    (checkpoint,) = await feed(store)
    reader: list[StoredEvent] = []
    async with AsyncSession(engine) as slow:
        async with slow.begin():
            await store.append("slow", opened(1), expected_version=0, session=slow)
            later = asyncio.create_task(store.append("fast", opened(2), expected_version=0))
            if engine.dialect.name == "postgresql":  # until it waits (or, unlocked, is done)
                await wait_until(
                    lambda: later.done() or appends_waiting_for_the_lock(engine, store),
                    timeout=10,
                )
            reader += await feed(store, checkpoint.position)  # the slow one is not committed
        assert await later == 1
    reader += await feed(store, reader[-1].position if reader else checkpoint.position)
    assert [(r.stream_id, r.event) for r in reader] == [
        ("slow", Opened(n=1)),
        ("fast", Opened(n=2)),
    ]


async def test_an_append_in_the_callers_transaction_commits_and_rolls_back_with_it(
    engine: AsyncEngine, store: EventStore
) -> None:
    async with AsyncSession(engine) as session:
        async with session.begin():
            assert await store.append("s", opened(1), expected_version=0, session=session) == 1
            assert await store.stream_version("s", session=session) == 1  # it sees its own
            assert [r.version for r in await store.read("s", session=session)] == [1]
            await session.rollback()
        assert await store.read("s") == []
        async with session.begin():
            await store.append("s", opened(2), expected_version=0, session=session)
    async with engine.begin() as connection:
        await store.append("s", opened(3), expected_version=1, session=connection)
    assert [r.event for r in await store.read("s")] == opened(2, 3)
    positions = [r.position for r in await feed(store)]
    assert positions == sorted(positions)


async def test_a_conflict_in_the_callers_transaction_names_the_version(
    engine: AsyncEngine, store: EventStore
) -> None:
    await store.append("s", opened(1), expected_version=0)
    async with AsyncSession(engine) as session, session.begin():
        with pytest.raises(ConcurrencyError) as caught:
            await store.append("s", opened(2), expected_version=0, session=session)
    assert (caught.value.expected, caught.value.actual) == (0, 1)


async def test_a_session_must_be_a_sqlalchemy_one(store: EventStore) -> None:
    with pytest.raises(ConfigurationError, match="AsyncSession"):
        await store.append("s", opened(1), expected_version=0, session=object())  # type: ignore[arg-type]


async def test_the_table_is_on_the_stores_metadata_under_its_prefix(engine: AsyncEngine) -> None:
    store = await new_store(engine)
    try:
        assert store.table.name.endswith("_events")
        assert store.metadata.tables[store.table.name] is store.table
        await store.create_tables()  # a second time changes nothing
        names = await _table_names(engine)
        assert store.table.name in names
    finally:
        await drop(engine, store)
    assert EventStore(engine).table.name == "eventbus_events"


async def _table_names(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as connection:
        return set(await connection.run_sync(lambda c: sa.inspect(c).get_table_names()))


def test_an_engine_that_is_not_async_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="AsyncEngine"):
        EventStore(sa.create_engine("sqlite://"))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "engine", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
async def test_a_conflict_found_only_at_the_insert_is_a_concurrency_error(
    engine: AsyncEngine, store: EventStore
) -> None:
    """At REPEATABLE READ the transaction's snapshot predates the winner's commit, so the
    version check passes and the unique key refuses the insert: still a ConcurrencyError
    (the actual version cannot be read in that transaction), and nothing is stored."""
    async with AsyncSession(engine) as session:
        await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        assert await store.stream_version("s", session=session) == 0  # the snapshot is taken
        await store.append("s", opened(1), expected_version=0)  # another transaction wins
        with pytest.raises(ConcurrencyError) as caught:
            await store.append("s", opened(2), expected_version=0, session=session)
        assert (caught.value.expected, caught.value.actual) == (0, None)
        await session.rollback()
    assert [r.event for r in await store.read("s")] == opened(1)
