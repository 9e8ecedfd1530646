"""The order saga on SQLite and PostgreSQL: every transition commits its state, the messages
it publishes (through the outbox) and the inbox record of its event in one transaction."""

from __future__ import annotations

import asyncio
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
    assert sorted(faults.done) == ["shop.order.cancel", "shop.payment.refund", "shop.stock.release"]
    assert await count(engine, store.timer_table) == 0


async def test_two_workers_fire_each_due_timer_once(
    engine: AsyncEngine, outbox: Outbox, store: SqlSagaStore
) -> None:
    """Six orders time out at once; two workers fire their timers at the same time: each
    timeout and each compensation runs once (a worker takes a timer by deleting it first)."""
    faults = Faults(shipping_answers=False)
    clock = FakeClock(start=time.time())
    saga = order_saga(faults, store=store, clock=clock)
    bus = EventBus("memory://", service="shop", outbox=outbox, routers=[services(faults)])
    bus.include_router(saga.router())
    keys = [f"o-{n}" for n in range(6)]
    async with bus:
        relay, worker = OutboxRelay(engine, bus), SagaWorker(bus, [saga])
        for key in keys:
            await bus.publish(OrderCreated(order_id=key, amount=1), key=key)
        await settle(bus, relay, worker)
        await clock.advance(60)
        racing = [SagaWorker(bus, [saga]) for _ in "ab"]
        await asyncio.gather(*(w.run_once() for w in racing))
        await settle(bus, relay, worker)
        instances = [await saga.show(key) for key in keys]
    for instance in instances:
        causes = [t.cause for t in instance.history]
        assert instance.status == COMPENSATED
        assert causes[3:] == [
            "timeout:schedule_shipment", "compensate:charge_payment",
            "compensate:reserve_stock", "compensate:(on_compensated)",
        ]  # fmt: skip
    assert faults.done.count("shop.payment.refund") == len(keys)
    assert faults.done.count("shop.order.cancel") == len(keys)
