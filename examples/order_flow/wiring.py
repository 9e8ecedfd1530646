"""How the order flow's parts are put together, once, for one process or for several.

``Flow`` holds what a variant needs (the database, the outbox, the order service, the saga and
the services' routers); ``orders_bus`` and ``service_bus`` make the buses. ``__main__`` runs
everything in one process with them; ``apps`` gives each service a process of its own.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from eventbus import EventBus, Router
from eventbus.outbox import Outbox, OutboxRelay
from eventbus.sagas import Saga, SagaWorker, SqlSagaStore
from examples.order_flow import choreography, orchestration
from examples.order_flow.domain import Shop
from examples.order_flow.orchestration import OrderState
from examples.order_flow.orders import OrderService, Variant
from examples.order_flow.settings import broker_options, broker_url


@dataclass
class Flow:
    variant: Variant
    engine: AsyncEngine
    outbox: Outbox
    orders: OrderService
    saga: Saga[OrderState] | None
    services: dict[str, Router]
    """The inventory, payment and shipping services' routers, by name."""

    @classmethod
    def of(cls, variant: Variant, engine: AsyncEngine, shop: Shop) -> Flow:
        outbox = Outbox()
        orders = OrderService(engine, outbox, variant)
        if variant == "choreography":
            return cls(variant, engine, outbox, orders, None, choreography.routers(shop))
        saga = orchestration.order_saga()
        saga.store = SqlSagaStore(engine, outbox=outbox)
        return cls(variant, engine, outbox, orders, saga, orchestration.services(shop))

    async def drop_tables(self) -> None:
        """Every table ``create_tables`` makes, gone: a demo run starts from nothing."""
        async with self.engine.begin() as connection:
            for metadata in self.orders.metadata():
                await connection.run_sync(metadata.drop_all)

    async def create_tables(self) -> None:
        await self.outbox.create_tables(self.engine)
        await self.orders.create_tables()
        if self.saga is not None:
            assert isinstance(self.saga.store, SqlSagaStore)
            await self.saga.store.create_tables()

    def orders_bus(self) -> EventBus:
        """The order service's bus (with the saga, under orchestration)."""
        routers = [self.orders.router()]
        if self.saga is not None:
            routers.append(self.saga.router())
        return self._bus("orders", routers)

    def orders_app(self, bus: EventBus, poll_interval: float = 0.05) -> FastAPI:
        """The order service's app on ``bus``: its lifespan runs the bus, the outbox relay and,
        under orchestration, the saga's timer worker, each polling every ``poll_interval`` s."""
        services: list[AbstractAsyncContextManager[Any]] = [
            OutboxRelay(self.engine, bus, poll_interval=poll_interval)
        ]
        if self.saga is not None:
            services.append(SagaWorker(bus, [self.saga], poll_interval=poll_interval))
        return self.orders.app(bus, services)

    def service_bus(self, *names: str) -> EventBus:
        """A bus for the named services (all of them when none is named)."""
        chosen = [self.services[n] for n in names] if names else list(self.services.values())
        return self._bus("-".join(names) or "services", chosen)

    def _bus(self, service: str, routers: list[Router]) -> EventBus:
        return EventBus(
            broker_url(self.variant), service=service, routers=routers, outbox=self.outbox,
            **broker_options(),
        )  # fmt: skip
