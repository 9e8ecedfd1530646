"""Run the order flow as choreography, then as a saga: ``python -m examples.order_flow``.

``--fail payment`` declines the card; ``--fail shipment-timeout`` makes shipping go silent.
Each variant places one order through ``POST /orders`` and prints its timeline; then both
outcomes are put side by side: the order's status in the read model, and what was done and
undone, in order.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import uuid

import httpx

from eventbus import EventBus
from eventbus.sagas import COMPENSATION_FAILED, SagaNotFound
from eventbus.testing import wait_until
from examples.order_flow.domain import Faults, Shop
from examples.order_flow.orders import Variant
from examples.order_flow.settings import make_engine
from examples.order_flow.wiring import Flow
from examples.quiet import until_quiet

FINISHED = {"completed", "compensated", COMPENSATION_FAILED}


async def run(variant: Variant, shop: Shop) -> tuple[str, str]:
    """Place one order in ``variant``; its status in the read model, and the saga's (or "-")."""
    flow = Flow.of(variant, make_engine(variant), shop)
    await flow.drop_tables()  # a fresh run: the example's own tables, on SQLite or PostgreSQL
    await flow.create_tables()
    bus = flow.orders_bus()  # one process: the services' routers join the order service's bus
    for router in flow.services.values():
        bus.include_router(router)
    app = flow.orders_app(bus)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://orders") as client,
    ):
        order = {"sku": "book-42", "quantity": 1, "amount_cents": 2500}
        key = {"Idempotency-Key": str(uuid.uuid4())}  # kept for a retry of this request
        placed = (await client.post("/orders", json=order, headers=key)).raise_for_status().json()
        saga_status = await _settled(bus, flow, placed["order_id"])
        view = (await client.get(f"/orders/{placed['order_id']}")).raise_for_status().json()
    await flow.engine.dispose()
    return view["status"], saga_status


async def _settled(bus: EventBus, flow: Flow, key: str) -> str:
    """Wait (at most 30 s) until nothing more happens: the saga, if any, has ended, and
    everything published has been handled. Returns the saga's status, "-" without one."""
    status = "-"

    async def ended() -> bool:
        nonlocal status
        assert flow.saga is not None
        with contextlib.suppress(SagaNotFound):  # not until OrderCreated is handled
            status = (await flow.saga.show(key)).status
        return status in FINISHED

    if flow.saga is not None:
        await wait_until(ended, timeout=30, message="the saga did not end within 30 s")
    await until_quiet(bus, flow.outbox, flow.engine)
    return status


async def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.order_flow", description=__doc__)
    parser.add_argument("--fail", choices=["payment", "shipment-timeout"], default=None)
    fail = parser.parse_args().fail
    logging.basicConfig(level=logging.CRITICAL)  # the timeline tells the story

    outcomes = {}
    variants: tuple[Variant, ...] = ("choreography", "saga")
    for variant in variants:
        faults = Faults(
            payment_declined=fail == "payment", shipping_silent=fail == "shipment-timeout"
        )
        shop = Shop(faults=faults)
        print(f"== {variant}{f' (--fail {fail})' if fail else ''}")
        outcomes[variant] = (*await run(variant, shop), shop)

    print("== side by side")
    for variant, (order, saga_status, shop) in outcomes.items():
        ending = f"the saga {saga_status}" if saga_status != "-" else "no one owns the flow"
        print(f"  {variant:<12} order {order!r} ({ending})")
        print(f"  {'':<12} done and undone: {', '.join(shop.journal) or 'nothing'}")
        print(f"  {'':<12} stock left {shop.stock}, money held {shop.charged}")


if __name__ == "__main__":
    asyncio.run(main())
