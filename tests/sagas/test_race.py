"""Two workers racing on one instance, for real: two buses on one Redis consumer group, each
with its own PostgreSQL engine, handling events of the same instance at the same time. Every
event is applied exactly once: the loser of a race finds the version moved on, stores
nothing, and the retry policy runs it again on the new state."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from eventbus import Event, EventBus
from eventbus.brokers.redis import RedisBroker
from eventbus.outbox import Outbox
from eventbus.sagas import COMPLETED, Saga, SagaStep, SqlSagaStore
from eventbus.testing import wait_until
from tests.sagas.orderflow import OrderCreated

pytestmark = [pytest.mark.anyio, pytest.mark.redis, pytest.mark.postgres]

ITEMS = 24


class ItemPicked(Event):
    event_type = "shop.item.picked"
    order_id: str
    item: int


class Picking(BaseModel):
    order_id: str
    items: list[int] = []


class Rendezvous:
    """The first two handler runs wait for each other (up to a deadline), so that two
    transitions of the instance are certainly decided at the same time once."""

    def __init__(self) -> None:
        self.runs = 0
        self._both = asyncio.Event()

    async def __call__(self) -> None:
        self.runs += 1
        if self.runs == 2:
            self._both.set()
        if self.runs <= 2:
            with contextlib.suppress(asyncio.TimeoutError):  # not the builtin on 3.10
                await asyncio.wait_for(self._both.wait(), 10)


def picking(store: SqlSagaStore, rendezvous: Rendezvous) -> Saga[Picking]:
    saga = Saga("shop.picking", Picking, key="order_id", store=store, concurrency=4)

    @saga.starts(OrderCreated)
    def start(event: OrderCreated, step: SagaStep[Picking]) -> None:
        step.state = Picking(order_id=event.order_id)
        step.goto("picking")

    @saga.on(ItemPicked, when="picking")
    async def picked(event: ItemPicked, step: SagaStep[Picking]) -> None:
        await rendezvous()
        step.state.items.append(event.item)
        if len(step.state.items) == ITEMS:
            step.complete()

    return saga


@pytest.fixture
async def engines(postgres_url: str) -> AsyncIterator[list[AsyncEngine]]:
    made = [create_async_engine(postgres_url, pool_size=6) for _ in "ab"]
    yield made
    for engine in made:
        await engine.dispose()


@pytest.mark.slow
async def test_two_workers_racing_on_one_instance_apply_each_event_once(
    engines: list[AsyncEngine], redis_url: str, prefix: str
) -> None:
    name = uuid.uuid4().hex[:10]
    outbox = Outbox(table=f"outbox_{name}", inbox=f"inbox_{name}")
    stores = [
        SqlSagaStore(e, outbox=outbox, table=f"sagas_{name}", timers=f"timers_{name}")
        for e in engines
    ]
    await outbox.create_tables(engines[0])
    await stores[0].create_tables()
    rendezvous = Rendezvous()
    sagas = [picking(store, rendezvous) for store in stores]
    buses = [
        EventBus(RedisBroker(redis_url, prefix=prefix), service="shop", outbox=outbox)
        for _ in sagas
    ]
    for bus, saga in zip(buses, sagas, strict=True):
        bus.include_router(saga.router())
    try:
        async with buses[0], buses[1]:
            await buses[0].publish(OrderCreated(order_id="o-1", amount=1), key="o-1")

            async def started() -> bool:
                return bool(await sagas[0].list())

            await wait_until(started, timeout=20, message="the instance never started")
            sent = [
                await buses[i % 2].publish(ItemPicked(order_id="o-1", item=i))  # no key: at once
                for i in range(ITEMS)
            ]

            async def finished() -> bool:
                return (await sagas[1].show("o-1")).status == COMPLETED

            await wait_until(finished, timeout=60, message="not every item was applied")
            instance = await sagas[0].show("o-1")
    finally:
        async with engines[0].begin() as connection:
            await connection.run_sync(outbox.metadata.drop_all)
    assert sorted(instance.state.items) == list(range(ITEMS))
    assert instance.version == ITEMS + 1
    applied = [t.event_id or "" for t in instance.history[1:]]
    assert sorted(applied) == sorted(e.id for e in sent)  # each once
    assert rendezvous.runs > ITEMS  # at least one transition lost its race and ran again
