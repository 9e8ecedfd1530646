"""The order saga on SQLite and PostgreSQL: every transition commits its state, the messages
it publishes (through the outbox) and the inbox record of its event in one transaction."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from eventbus import EventBus
from eventbus.outbox import Outbox, OutboxRelay
from eventbus.sagas import COMPENSATED, COMPLETED, SagaWorker, SqlSagaStore
from eventbus.testing import FakeClock, published
from tests.sagas.orderflow import FLOW, Faults, OrderCreated, order_saga, services
from tests.sagas.sqlflow import settle

pytestmark = pytest.mark.anyio


async def count(engine: AsyncEngine, table: sa.Table) -> int:
    async with engine.connect() as connection:
        return int(
            (await connection.execute(sa.select(sa.func.count()).select_from(table))).scalar_one()
        )


async def test_the_order_saga_completes_through_the_outbox_and_the_inbox(
    engine: AsyncEngine, outbox: Outbox, store: SqlSagaStore
) -> None:
    faults = Faults()
    saga = order_saga(faults, store=store)
    bus = EventBus("memory://", service="shop", outbox=outbox, routers=[services(faults)])
    bus.include_router(saga.router())
    async with bus:
        relay, worker = OutboxRelay(engine, bus), SagaWorker(bus, [saga])
        await bus.publish(OrderCreated(order_id="o-1", amount=30), key="o-1")
        await bus.drain()
        assert published(bus)
        assert await count(engine, outbox.table) == 1
        await settle(bus, relay, worker)
        instance = await saga.show("o-1")
        handled = await count(engine, outbox.inbox)
    assert instance.status == COMPLETED
    assert instance.version == 4
    assert [e.type for e in published(bus) if e.type in FLOW] == FLOW
    assert handled == 4  # one inbox record per event the saga applied
    assert await count(engine, outbox.table) == 0
    commands = [e for e in published(bus) if e.type in FLOW]
    assert {e.partitionkey for e in commands} == {"o-1"}
    first = published(bus)[0]
    assert {e.correlationid for e in commands} == {first.correlationid or first.id}


async def test_a_timeout_survives_in_the_table_and_compensates_on_the_fake_clock(
    engine: AsyncEngine, outbox: Outbox, store: SqlSagaStore
) -> None:
    faults = Faults(shipping_answers=False, failures={"payments": 1})
    clock = FakeClock(start=time.time())
    saga = order_saga(faults, store=store, clock=clock)
    bus = EventBus("memory://", service="shop", outbox=outbox, routers=[services(faults)])
    bus.include_router(saga.router())
    async with bus:
        relay, worker = OutboxRelay(engine, bus), SagaWorker(bus, [saga])
        await bus.publish(OrderCreated(order_id="o-2", amount=30), key="o-2")
        await settle(bus, relay, worker)
        waiting = await saga.show("o-2")
        assert [(t.kind, t.name) for t in waiting.timers] == [("timeout", "schedule_shipment")]
        assert await count(engine, store.timer_table) == 1

        restarted = SagaWorker(bus, [saga])  # a new worker finds the timer in the table
        await clock.advance(60)
        await settle(bus, relay, restarted)
        retrying = await saga.show("o-2")
        assert retrying.attempts == 1
        assert retrying.status == "compensating"
        await clock.advance(1)
        await settle(bus, relay, restarted)
        instance = await saga.show("o-2")
    assert instance.status == COMPENSATED
    assert [e.type for e in published(bus)][-3:] == [
        "shop.payment.refund",
        "shop.stock.release",
        "shop.order.cancel",
    ]  # the failed refund attempt published nothing: its transaction rolled back
    assert faults.done == ["shop.payment.refund", "shop.stock.release", "shop.order.cancel"]
    assert await count(engine, store.timer_table) == 0
