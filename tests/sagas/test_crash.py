"""A saga worker killed with SIGKILL between two steps resumes with no transition lost or
applied twice, on SQLite and on PostgreSQL.

A real worker process (bus on Redis Streams, outbox relay, saga worker) runs the order saga
and kills itself at one of three points: *inside* the ``StockReserved`` transition (the step
is running, nothing is committed), *after* it committed and before the delivery was
acknowledged, or while *compensating* a declined payment (the stock release is running in
the saga worker's transaction). A fresh worker in this process then takes over the dead
one's deliveries, outbox rows and timers and finishes the order.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from eventbus import EventBus
from eventbus.brokers.redis import RedisBroker
from eventbus.outbox import Outbox, OutboxRelay
from eventbus.sagas import COMPLETED, SagaWorker, SqlSagaStore
from eventbus.testing import wait_until
from tests.sagas.orderflow import Faults, OrderCreated, order_saga, services

pytestmark = [pytest.mark.anyio, pytest.mark.redis, pytest.mark.slow]

ROOT = Path(__file__).parent.parent.parent

_VICTIM = """
import asyncio, os, signal, sys
from sqlalchemy.ext.asyncio import create_async_engine
from eventbus import EventBus
from eventbus.brokers.redis import RedisBroker
from eventbus.middleware import Retry
from eventbus.outbox import Outbox, OutboxRelay
from eventbus.sagas import SagaWorker, SqlSagaStore
from tests.sagas.orderflow import Faults, order_saga, services

def die():
    os.kill(os.getpid(), signal.SIGKILL)

class DieAfterCommit:
    async def __call__(self, ctx, call_next):
        await call_next(ctx)  # the saga's Inbox transaction has committed
        group = ctx.subscription.group
        if ctx.envelope.type == "shop.stock.reserved" and group.startswith("saga."):
            die()

async def main(database, table, inbox, sagas, timers, redis_url, prefix, point):
    options = {"timeout": 30} if "sqlite" in database else {}
    engine = create_async_engine(database, connect_args=options)
    outbox = Outbox(table=table, inbox=inbox)
    store = SqlSagaStore(engine, outbox=outbox, table=sagas, timers=timers)
    faults = Faults(hooks={"charge": die} if point == "inside" else {})
    if point == "compensating":  # the payment is declined; die releasing the stock
        faults = Faults(payment="declined", hooks={"release": die})
    saga = order_saga(faults, store=store)
    middleware = [DieAfterCommit(), Retry()] if point == "after" else [Retry()]
    broker = RedisBroker(redis_url, prefix=prefix)
    bus = EventBus(broker, service="shop", outbox=outbox, middleware=middleware,
                   routers=[services(faults), saga.router()])
    async with bus, OutboxRelay(engine, bus, lease=30, poll_interval=0.05):
        async with SagaWorker(bus, [saga], poll_interval=0.05):
            print("running", flush=True)
            await asyncio.Event().wait()

asyncio.run(main(*sys.argv[1:]))
"""

HAPPY = ["shop.order.created", "shop.stock.reserved", "shop.payment.processed",
         "shop.shipment.scheduled"]  # fmt: skip
COMPENSATED = ["shop.order.created", "shop.stock.reserved", "shop.payment.failed",
               "compensate:reserve_stock", "compensate:(on_compensated)"]  # fmt: skip
EXPECTED = {
    "inside": (("reserve_stock", 1), HAPPY, COMPLETED, ["shop.order.confirmed"]),
    "after": (("charge_payment", 2), HAPPY, COMPLETED, ["shop.order.confirmed"]),
    "compensating": (
        ("charge_payment", 3),
        COMPENSATED,
        "compensated",
        ["shop.stock.release", "shop.order.cancel"],
    ),
}


@pytest.mark.parametrize("point", sorted(EXPECTED))
async def test_a_worker_killed_between_steps_resumes_without_losing_or_repeating_one(
    engine: AsyncEngine,
    outbox: Outbox,
    store: SqlSagaStore,
    redis_url: str,
    prefix: str,
    tmp_path: Path,
    point: str,
) -> None:
    script = tmp_path / "victim.py"
    script.write_text(_VICTIM)
    database = engine.url.render_as_string(hide_password=False)
    tables = (outbox.table.name, outbox.inbox.name, store.table.name, store.timer_table.name)
    stderr = (tmp_path / "victim.err").open("wb")
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    victim = await asyncio.create_subprocess_exec(
        sys.executable, str(script), database, *tables, redis_url, prefix, point,
        stdout=asyncio.subprocess.PIPE, stderr=stderr, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": path},  # the victim imports tests.sagas.orderflow
    )  # fmt: skip
    saga = order_saga(Faults(), store=store)
    try:
        assert victim.stdout is not None
        line = await asyncio.wait_for(victim.stdout.readline(), 30)
        assert line == b"running\n", (tmp_path / "victim.err").read_text()
        publisher = EventBus(RedisBroker(redis_url, prefix=prefix), service="shop")
        async with publisher:
            await publisher.publish(OrderCreated(order_id="o-1", amount=30), key="o-1")
        await asyncio.wait_for(victim.wait(), 30)
    finally:
        if victim.returncode is None:
            victim.send_signal(signal.SIGKILL)
            await victim.wait()
        stderr.close()
    assert victim.returncode == -signal.SIGKILL, (tmp_path / "victim.err").read_text()

    where, history, status, done = EXPECTED[point]
    dead = await saga.show("o-1")
    assert (dead.phase, dead.version) == where

    faults = Faults(payment="declined" if point == "compensating" else "ok")
    saga = order_saga(faults, store=store)
    broker = RedisBroker(redis_url, prefix=prefix, claim_idle=0.5, claim_interval=0.2)
    bus = EventBus(broker, service="shop", outbox=outbox, routers=[services(faults)])
    bus.include_router(saga.router())
    relay = OutboxRelay(engine, bus, poll_interval=0.05, now=lambda: time.time() + 60)
    async with bus, relay, SagaWorker(bus, [saga], poll_interval=0.05):

        async def finished() -> bool:
            return (await saga.show("o-1")).status == status

        await wait_until(finished, timeout=30, message="the order was not finished")
        await wait_until(lambda: len(faults.done) == len(done), timeout=30, message="not sent")
        instance = await saga.show("o-1")
    assert [t.cause for t in instance.history] == history
    assert instance.version == len(history)
    events = [t.event_id for t in instance.history if t.event_id is not None]
    assert len(set(events)) == len(events)
    assert sorted(faults.done) == sorted(done)  # each received once (streams: no order)
