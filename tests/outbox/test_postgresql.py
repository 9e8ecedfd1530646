"""PostgreSQL's storage of the outbox table: a claim's lease is a HOT update."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from eventbus import Event, EventBus
from eventbus.outbox import Outbox
from eventbus.outbox.claims import Statements

pytestmark = pytest.mark.anyio


class Staged(Event):
    n: int
    text: str


@pytest.fixture
async def engine(postgres_url: str) -> AsyncIterator[AsyncEngine]:
    made = create_async_engine(postgres_url)
    yield made
    await made.dispose()


@pytest.mark.parametrize("size", [10, 1_000, 4_000])
async def test_a_claim_rewrites_its_rows_without_touching_the_indexes(
    engine: AsyncEngine, size: int
) -> None:
    """A lease writes every claimed row again; on a page with room left that is a HOT update,
    no index entry written, which makes the claim cheap whatever the row's size."""
    name = uuid.uuid4().hex[:10]
    outbox = Outbox(table=f"outbox_{name}", inbox=f"inbox_{name}")
    await outbox.create_tables(engine)
    try:
        bus = EventBus("memory://", service="shop", outbox=outbox)
        events = [(Staged(n=n, text="x" * size), f"key-{n % 7}") for n in range(200)]
        async with AsyncSession(engine) as session, session.begin():
            await bus.publish_many(events, session=session)
        statements = Statements(outbox.table, ordered=True, dialect="postgresql")
        now = time.time()
        claim, parameters = statements.claim(str(uuid.uuid4()), now, now + 30, 200, 800)
        counts = sa.text(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables WHERE relid = "
            "CAST(:table AS regclass)"
        )
        async with engine.begin() as connection:
            claimed = (await connection.execute(claim, parameters)).all()
            updated, hot = (await connection.execute(counts, {"table": outbox.table.name})).one()
        assert (len(claimed), updated) == (200, 200)
        assert hot == 200
    finally:
        async with engine.begin() as connection:
            await connection.run_sync(outbox.metadata.drop_all)
