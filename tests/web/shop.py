"""A FastAPI shop: an endpoint that saves an order and publishes OrderPlaced through the
outbox, in one transaction; the bus handles the event it published."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

import httpx
import sqlalchemy as sa
from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from eventbus import Event, EventBus
from eventbus.fastapi import OutboxPublisher, Transaction, get_bus, lifespan
from eventbus.outbox import Outbox, OutboxRelay


class OrderPlaced(Event):
    order_id: str
    total: int


class NewOrder(BaseModel):
    order_id: str
    total: int
    fail: str | None = None
    """``"http"``: raise HTTPException after the writes; ``"crash"``: raise RuntimeError."""
    wait: bool = False
    """Hold the request open until the test opens ``shop.gate``."""


@dataclass
class Shop:
    app: FastAPI
    bus: EventBus
    engine: AsyncEngine
    orders: sa.Table
    transaction: Transaction
    relay: OutboxRelay
    handled: list[OrderPlaced] = field(default_factory=list)
    runs: int = 0
    """How many times the endpoint's body ran."""
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    crash_next: bool = False

    def client(self) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False)
        return httpx.AsyncClient(transport=transport, base_url="http://shop")

    async def saved(self) -> list[str]:
        async with self.engine.connect() as connection:
            rows = await connection.execute(sa.select(self.orders.c.id).order_by("id"))
            return [row.id for row in rows]

    async def published(self) -> list[str]:
        """Relay what committed, let the bus handle it; the order ids handled so far."""
        await self.relay.run_once()
        await self.bus.drain()
        return [event.order_id for event in self.handled]


async def make_shop(engine: AsyncEngine, outbox: Outbox) -> Shop:
    orders = sa.Table(
        f"orders_{uuid.uuid4().hex[:8]}",
        sa.MetaData(),
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("total", sa.Integer, nullable=False),
    )
    async with engine.begin() as connection:
        await connection.run_sync(orders.metadata.create_all)
    bus = EventBus("memory://", service="shop", outbox=outbox)
    transaction = Transaction(async_sessionmaker(engine, expire_on_commit=False))
    shop = Shop(FastAPI(), bus, engine, orders, transaction, OutboxRelay(engine, bus))

    @bus.subscribe(OrderPlaced)
    async def record(event: OrderPlaced) -> None:
        shop.handled.append(event)

    @asynccontextmanager
    async def own_lifespan(app: Any) -> AsyncIterator[dict[str, Any]]:
        yield {"started_with_bus_running": bus.running}

    shop.app = FastAPI(lifespan=lifespan(bus, own_lifespan))
    add_routes(shop)
    return shop


def add_routes(shop: Shop) -> None:
    in_transaction = shop.transaction.depends  # (local names: no Annotated aliases here)
    outbox_publisher = Depends(shop.transaction.publisher)

    @shop.app.post("/orders", status_code=201)
    async def place(
        order: NewOrder,
        session: AsyncSession = in_transaction,
        publisher: OutboxPublisher = outbox_publisher,
    ) -> dict[str, Any]:
        if order.wait:
            shop.entered.set()
            await shop.gate.wait()
        shop.runs += 1
        await session.execute(sa.insert(shop.orders).values(id=order.order_id, total=order.total))
        envelope = await publisher.publish(OrderPlaced(order_id=order.order_id, total=order.total))
        if order.fail == "http":
            raise HTTPException(409, "out of stock")
        if order.fail == "crash" or shop.crash_next:
            shop.crash_next = False
            raise RuntimeError("the endpoint failed")
        return {"order_id": order.order_id, "event_id": envelope.id, "source": envelope.source}

    @shop.app.get("/service")
    async def service(bus: Annotated[EventBus, Depends(get_bus)]) -> dict[str, str]:
        return {"service": bus.service}
