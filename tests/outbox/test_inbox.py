"""The inbox: a handler's writes, its record of the event and the events it publishes commit
together; a duplicate delivery changes nothing, a rolled-back one runs again. On the memory bus
(SQLite and PostgreSQL) and on Redis Streams."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from eventbus import Context, Event, EventBus, Router
from eventbus.brokers.redis import RedisBroker
from eventbus.middleware import Retry
from eventbus.outbox import Inbox, Outbox, OutboxRelay
from eventbus.outbox.inbox import DUPLICATE
from eventbus.testing import published, wait_until
from tests.redissupport import delete_prefix

pytestmark = pytest.mark.anyio


class Ordered(Event):
    order_id: str


class Invoiced(Event):
    order_id: str


@pytest.fixture
async def invoices(engine: AsyncEngine) -> AsyncIterator[sa.Table]:
    """The application's own table, in the same database as the inbox."""
    table = sa.Table(
        f"invoices_{uuid.uuid4().hex[:8]}",
        sa.MetaData(),
        sa.Column("order_id", sa.String(64), primary_key=True),
    )
    async with engine.begin() as connection:
        await connection.run_sync(table.create)
    yield table
    async with engine.begin() as connection:
        await connection.run_sync(table.drop)


class Billing:
    """A handler that writes an invoice and publishes a follow-up; it can be made to fail."""

    def __init__(self, table: sa.Table) -> None:
        self.table, self.fail_once = table, False
        self.runs: list[str] = []

    async def __call__(self, event: Ordered, ctx: Context) -> None:
        self.runs.append(event.order_id)
        await ctx.session.execute(sa.insert(self.table).values(order_id=event.order_id))
        await ctx.publish(Invoiced(order_id=event.order_id))
        if self.fail_once:
            self.fail_once = False
            raise RuntimeError("the mail server is down, after the writes")


class Seen:
    def __init__(self) -> None:
        self.duplicates: list[bool] = []

    async def __call__(self, ctx: Context, call_next: Any) -> None:
        await call_next(ctx)
        self.duplicates.append(bool(ctx.state.get(DUPLICATE)))


async def _count(engine: AsyncEngine, table: sa.Table) -> int:
    async with engine.connect() as connection:
        return int(
            (await connection.execute(sa.select(sa.func.count()).select_from(table))).scalar_one()
        )


def _bus(broker: Any, outbox: Outbox, billing: Billing, inbox: Inbox, seen: Seen) -> EventBus:
    router = Router()
    router.subscribe(Ordered, group="billing", middleware=[seen, inbox])(billing)
    return EventBus(
        broker,
        service="billing",
        routers=[router],
        outbox=outbox,
        middleware=[Retry(tries=2, backoff=0, jitter=0, delays=())],
    )


async def test_a_duplicate_delivery_changes_nothing(
    engine: AsyncEngine, outbox: Outbox, invoices: sa.Table
) -> None:
    billing, seen = Billing(invoices), Seen()
    bus = _bus("memory://", outbox, billing, Inbox(engine, outbox=outbox), seen)
    async with bus:
        order = await bus.publish(Ordered(order_id="o1"))
        await bus.publish_envelope(order)  # the same event again, as a redelivery brings it
        await bus.drain()
        assert billing.runs == ["o1"]
        assert seen.duplicates == [False, True]
        assert await _count(engine, invoices) == 1
        assert (await outbox.backlog(engine)).pending == 1  # the follow-up, staged once
        assert await OutboxRelay(engine, bus, outbox=outbox).run_once() == 1
    [follow_up] = published(bus, Invoiced)
    assert follow_up.causationid == order.id


async def test_a_handler_that_failed_rolls_everything_back_and_runs_again(
    engine: AsyncEngine, outbox: Outbox, invoices: sa.Table
) -> None:
    billing, seen = Billing(invoices), Seen()
    billing.fail_once = True
    bus = _bus("memory://", outbox, billing, Inbox(engine, outbox=outbox), seen)
    async with bus:
        await bus.publish(Ordered(order_id="o2"))
        await bus.drain()
        assert billing.runs == ["o2", "o2"]  # the first try's writes were rolled back
        assert await _count(engine, invoices) == 1
        assert (await outbox.backlog(engine)).pending == 1
        assert await _count(engine, outbox.inbox) == 1


async def test_a_plain_def_handler_stages_its_publishes_in_the_transaction(
    engine: AsyncEngine, outbox: Outbox
) -> None:
    router = Router()

    @router.subscribe(Ordered, group="sync", middleware=[Inbox(engine, outbox=outbox)])
    def bill(event: Ordered, ctx: Context) -> None:
        ctx.publish(Invoiced(order_id=event.order_id))

    async with EventBus("memory://", routers=[router], outbox=outbox) as bus:
        await bus.publish(Ordered(order_id="o3"))
        await bus.drain()
        assert published(bus, Invoiced) == []  # staged, not sent
        assert (await outbox.backlog(engine)).pending == 1


async def test_an_inbox_on_a_bus_without_an_outbox_says_what_to_add(
    engine: AsyncEngine, outbox: Outbox, invoices: sa.Table
) -> None:
    billing = Billing(invoices)
    router = Router()
    router.subscribe(Ordered, group="billing", middleware=[Inbox(engine, outbox=outbox)])(billing)
    retry = Retry(tries=1, delays=())
    async with EventBus("memory://", routers=[router], middleware=[retry]) as bus:
        await bus.publish(Ordered(order_id="o4"))
        await bus.drain()
        [record] = await bus.dead_letters.list()
    assert "EventBus(..., outbox=Outbox())" in record.error_message
    assert await _count(engine, invoices) == 0  # rolled back with the failed publish


@pytest.mark.redis
@pytest.mark.parametrize("engine", ["sqlite"], indirect=True)
async def test_the_inbox_on_redis_streams(
    engine: AsyncEngine, outbox: Outbox, invoices: sa.Table, redis_url: str
) -> None:
    prefix = f"ebtest:{uuid.uuid4().hex[:10]}:"
    billing, seen = Billing(invoices), Seen()
    billing.fail_once = True
    broker = RedisBroker(redis_url, prefix=prefix, block=0.2, claim_interval=0.2)
    bus = _bus(broker, outbox, billing, Inbox(engine, outbox=outbox), seen)
    try:
        async with bus:
            order = await bus.publish(Ordered(order_id="o5"))
            await bus.publish_envelope(order)
            await wait_until(lambda: len(seen.duplicates) == 2, timeout=20)
            await OutboxRelay(engine, bus, outbox=outbox).run_once()
        assert billing.runs == ["o5", "o5"]  # failed once, then handled; the copy skipped
        assert seen.duplicates == [False, True]
        assert await _count(engine, invoices) == 1
    finally:
        await delete_prefix(redis_url, prefix)
