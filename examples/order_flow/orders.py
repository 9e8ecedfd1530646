"""The order service: orders as event-sourced aggregates, a read model, and ``POST /orders``.

* ``Order`` decides: ``place``, ``confirm`` and ``cancel`` check the order's state and record
  ``OrderCreated``, ``OrderConfirmed`` or ``OrderCancelled``. Its stream in the event store is
  the order's history; saving it with ``publish=True`` stages the same envelopes in the outbox
  in the same transaction, so what the other services receive is exactly what was stored.
* The ``order_summaries`` table is a projection of the store's feed: what ``GET /orders/{id}``
  reads. It is rebuilt from the events whenever needed.
* ``POST /orders`` places an order; it takes an ``Idempotency-Key``, so a client's retry
  gets the first order back instead of a second one. Which events confirm or cancel it
  depends on the variant: the shipping and payment facts under choreography, the saga's
  commands under orchestration.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations,
# which name a dependency local to ``OrderService.app``, when the routes are declared.
import uuid
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from eventbus import Context, EventBus, Router
from eventbus.aggregate import Aggregate, applies
from eventbus.eventstore import (
    EventStore,
    Projection,
    ProjectionContext,
    ProjectionRunner,
    Repository,
)
from eventbus.fastapi import IdempotencyKeyMiddleware, Transaction, lifespan
from eventbus.middleware.idempotency_sql import SqlIdempotencyStore
from eventbus.outbox import Outbox
from examples.order_flow.events import (
    CancelOrder,
    ConfirmOrder,
    OrderCancelled,
    OrderConfirmed,
    OrderCreated,
    PaymentFailed,
    ShipmentScheduled,
)
from examples.timeline import say

Variant = Literal["choreography", "saga"]


class Order(Aggregate):
    def __init__(self, id: str) -> None:
        super().__init__(id)
        self.status = "new"

    def place(self, sku: str, quantity: int, amount_cents: int) -> None:
        if self.status != "new":
            raise ValueError(f"order {self.id} is placed already")
        self.record(
            OrderCreated(order_id=self.id, sku=sku, quantity=quantity, amount_cents=amount_cents)
        )

    def confirm(self) -> None:
        if self.status == "placed":  # a repeat, or too late after a cancel: nothing to do
            self.record(OrderConfirmed(order_id=self.id))

    def cancel(self, reason: str) -> None:
        if self.status == "placed":
            self.record(OrderCancelled(order_id=self.id, reason=reason))

    @applies(OrderCreated)
    def _created(self, event: OrderCreated) -> None:
        self.status = "placed"

    @applies(OrderConfirmed)
    def _confirmed(self, event: OrderConfirmed) -> None:
        self.status = "confirmed"

    @applies(OrderCancelled)
    def _cancelled(self, event: OrderCancelled) -> None:
        self.status = "cancelled"


summaries = sa.Table(
    "order_summaries",
    sa.MetaData(),
    sa.Column("order_id", sa.String(64), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("amount_cents", sa.Integer, nullable=False),
)
summary = Projection("order-summaries")


@summary.on(OrderCreated)
async def _summary_created(event: OrderCreated, ctx: ProjectionContext) -> None:
    row = {"order_id": event.order_id, "status": "placed", "amount_cents": event.amount_cents}
    await ctx.session.execute(summaries.insert().values(**row))


@summary.on(OrderConfirmed)
async def _summary_confirmed(event: OrderConfirmed, ctx: ProjectionContext) -> None:
    await _set_status(ctx, event.order_id, "confirmed")


@summary.on(OrderCancelled)
async def _summary_cancelled(event: OrderCancelled, ctx: ProjectionContext) -> None:
    await _set_status(ctx, event.order_id, "cancelled")


@summary.on_reset
async def _summary_reset(session: AsyncSession) -> None:
    await session.execute(summaries.delete())


async def _set_status(ctx: ProjectionContext, order_id: str, status: str) -> None:
    await ctx.session.execute(
        summaries.update().where(summaries.c.order_id == order_id).values(status=status)
    )


class NewOrder(BaseModel):
    sku: str
    quantity: int
    amount_cents: int


class OrderView(BaseModel):
    order_id: str
    status: str
    amount_cents: int


class OrderService:
    """The order service's parts, on one database and one bus."""

    def __init__(self, engine: AsyncEngine, outbox: Outbox, variant: Variant) -> None:
        self.engine, self.variant = engine, variant
        self.store = EventStore(
            engine, service="orders", events=[OrderCreated, OrderConfirmed, OrderCancelled],
            outbox=outbox, metadata=outbox.metadata,
        )  # fmt: skip
        self.orders = Repository(self.store, Order)
        self.projection = ProjectionRunner(self.store, summary, poll_interval=0.02)
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self.transaction = Transaction(self._sessions)
        self.request_keys = SqlIdempotencyStore(engine, table="orders_request_keys")

    async def create_tables(self) -> None:
        await self.store.create_tables()
        await self.projection.create_tables()
        await self.request_keys.create_table()
        async with self.engine.begin() as connection:
            await connection.run_sync(summaries.metadata.create_all)

    def metadata(self) -> list[sa.MetaData]:
        """Where the service's tables are declared: the store's (with the outbox, the inbox,
        the checkpoints and the saga's tables), the read model's, the request keys'."""
        return [self.store.metadata, summaries.metadata, self.request_keys.table.metadata]

    async def _change(self, order_id: str, change: str, reason: str = "") -> None:
        """Load the order, run ``change`` on it, save and publish what it recorded, in one
        transaction. A concurrent change makes the save fail; the retry policy runs it again."""
        async with self._sessions() as session, session.begin():
            order = await self.orders.get(order_id, session=session)
            order.confirm() if change == "confirm" else order.cancel(reason)
            await self.orders.save(order, session=session, publish=True)

    def router(self) -> Router:
        """What confirms and cancels orders: facts under choreography, commands under the saga."""
        router = Router()
        if self.variant == "choreography":

            @router.subscribe(ShipmentScheduled, group="orders.shipped")
            async def shipped(event: ShipmentScheduled, ctx: Context) -> None:
                await self._change(event.order_id, "confirm")
                say("orders", f"{event.order_id} confirmed", ctx)

            @router.subscribe(PaymentFailed, group="orders.payment-failed")
            async def payment_failed(event: PaymentFailed, ctx: Context) -> None:
                await self._change(event.order_id, "cancel", event.reason)
                say("orders", f"{event.order_id} cancelled: {event.reason}", ctx)

        else:

            @router.subscribe(ConfirmOrder, group="orders.confirm")
            async def confirm(command: ConfirmOrder, ctx: Context) -> None:
                await self._change(command.order_id, "confirm")
                say("orders", f"{command.order_id} confirmed", ctx)

            @router.subscribe(CancelOrder, group="orders.cancel")
            async def cancel(command: CancelOrder, ctx: Context) -> None:
                await self._change(command.order_id, "cancel", command.reason)
                say("orders", f"{command.order_id} cancelled: {command.reason}", ctx)

        return router

    def app(
        self, bus: EventBus, services: Sequence[AbstractAsyncContextManager[Any]] = ()
    ) -> FastAPI:
        """``POST /orders`` and ``GET /orders/{id}``. The app's lifespan runs ``bus``, then
        ``services`` (the outbox relay, the saga worker…), then the projection."""
        app = FastAPI(title="orders", lifespan=lifespan(bus, services=[*services, self.projection]))
        # A retried POST with the same Idempotency-Key gets the first response (and the same
        # order) back: the stored response, the order's events and their outbox rows commit
        # in one transaction.
        app.add_middleware(
            IdempotencyKeyMiddleware, store=self.request_keys,
            sessionmaker=self.transaction.sessionmaker, paths=["/orders"],
        )  # fmt: skip

        @app.post("/orders", status_code=201)
        async def place(
            new: NewOrder, session: Annotated[AsyncSession, self.transaction.depends]
        ) -> OrderView:
            order = Order(f"order-{uuid.uuid4().hex[:8]}")
            order.place(new.sku, new.quantity, new.amount_cents)
            await self.orders.save(order, session=session, publish=True)
            say("orders", f"{order.id} placed: {new.quantity} x {new.sku}")
            return OrderView(order_id=order.id, status=order.status, amount_cents=new.amount_cents)

        @app.get("/orders/{order_id}")
        async def show(order_id: str) -> OrderView:
            await self.projection.wait_for()  # read your writes
            async with self.engine.connect() as connection:
                query = sa.select(summaries).where(summaries.c.order_id == order_id)
                row = (await connection.execute(query)).one_or_none()
            if row is None:
                raise HTTPException(404, f"no order {order_id}")
            return OrderView(**row._mapping)

        return app
