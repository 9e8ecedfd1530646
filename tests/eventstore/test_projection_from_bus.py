"""A projection fed from a bus subscription: applied once per event with the Inbox, in its
transaction, whatever the broker redelivers."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from eventbus import Event, EventBus, Router
from eventbus.eventstore import Projection, ProjectionContext
from eventbus.outbox import Inbox, Outbox
from tests.eventstore.conftest import sqlite_engine

pytestmark = pytest.mark.anyio


class Deposited(Event):
    event_type = "bank.money.deposited"
    account: str
    amount: int


async def test_without_an_inbox_every_delivery_is_applied() -> None:
    projection, seen = Projection("totals"), list[tuple[str, int]]()

    @projection.on(Deposited)
    async def deposited(event: Deposited, ctx: ProjectionContext) -> None:
        seen.append((ctx.record.stream_id, event.amount))

    router = Router()
    projection.subscribe(router, group="totals")
    async with EventBus("memory://", routers=[router]) as bus:
        await bus.publish(Deposited(account="a", amount=5), key="a")
        await bus.drain()
    assert seen == [("a", 5)]


async def test_with_the_inbox_a_redelivered_event_is_applied_once(tmp_path: Path) -> None:
    engine = sqlite_engine(tmp_path)
    tag = uuid.uuid4().hex[:8]
    outbox = Outbox(table=f"o{tag}_outbox", inbox=f"o{tag}_inbox")
    totals = sa.Table(
        "totals",
        outbox.metadata,
        sa.Column("account", sa.String, primary_key=True),
        sa.Column("total", sa.Integer, nullable=False),
    )
    await outbox.create_tables(engine)
    async with engine.begin() as connection:
        await connection.run_sync(outbox.metadata.create_all, tables=[totals])
    projection = Projection("totals")

    @projection.on(Deposited)
    async def deposited(event: Deposited, ctx: ProjectionContext) -> None:
        changed = await ctx.session.execute(
            sa.update(totals)
            .where(totals.c.account == event.account)
            .values(total=totals.c.total + event.amount)
        )
        if not changed.rowcount:  # type: ignore[attr-defined]
            await ctx.session.execute(
                sa.insert(totals).values(account=event.account, total=event.amount)
            )

    router = Router()
    projection.subscribe(router, group="totals", middleware=[Inbox(engine, outbox=outbox)])
    try:
        async with EventBus("memory://", routers=[router], outbox=outbox) as bus:
            sent = await bus.publish(Deposited(account="a", amount=5), key="a")
            await bus.publish(Deposited(account="a", amount=7), key="a")
            await bus.publish_envelope(sent)  # the broker delivers it again
            await bus.drain()
        async with AsyncSession(engine) as session:
            total = (await session.execute(sa.select(totals.c.total))).scalar_one()
        assert total == 12
    finally:
        await engine.dispose()
