"""Plain ``def`` handlers run in a worker thread and publish through ``ctx.publish``."""

from __future__ import annotations

import threading
import warnings

import pytest

from eventbus import Context, Envelope, Event, EventBus, PublishError, Router
from eventbus.testing import published

pytestmark = pytest.mark.anyio


class OrderPlaced(Event):
    order_id: str


class InvoiceSent(Event):
    order_id: str
    text: str = ""


async def test_a_sync_handler_publishes_with_ctx_publish() -> None:
    router, sent, threads = Router(), list[Envelope](), list[int]()

    @router.subscribe(OrderPlaced)
    def bill(event: OrderPlaced, ctx: Context) -> None:
        threads.append(threading.get_ident())
        envelope = ctx.publish(InvoiceSent(order_id=event.order_id)).result()  # blocks until sent
        sent.append(envelope)

    router.subscribe(InvoiceSent)(_ignore)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "coroutine was never awaited" fails the test
        async with EventBus("memory://", routers=[router]) as bus:
            origin = await bus.publish(OrderPlaced(order_id="o1"))
            await bus.drain()
    assert threads[0] != threading.get_ident()
    [invoice] = published(bus, InvoiceSent)
    assert sent == [invoice]
    assert invoice.causationid == origin.id
    assert invoice.correlationid == origin.correlationid


async def test_a_failed_publish_fails_the_sync_handler() -> None:
    router, errors = Router(), list[BaseException]()

    @router.subscribe(OrderPlaced)
    def bill(event: OrderPlaced, ctx: Context) -> None:
        try:
            ctx.publish(InvoiceSent(order_id=event.order_id, text="x" * 200))
        except PublishError as exc:
            errors.append(exc)

    async with EventBus("memory://", routers=[router], max_message_bytes=100) as bus:
        await bus.publish(OrderPlaced(order_id="o1"))
        await bus.drain()
    assert len(errors) == 1
    assert published(bus, InvoiceSent) == []


async def test_an_async_handler_awaits_ctx_publish_as_before() -> None:
    router = Router()

    @router.subscribe(OrderPlaced)
    async def bill(event: OrderPlaced, ctx: Context) -> None:
        await ctx.publish(InvoiceSent(order_id=event.order_id))

    router.subscribe(InvoiceSent)(_ignore)
    async with EventBus("memory://", routers=[router]) as bus:
        await bus.publish(OrderPlaced(order_id="o1"))
        await bus.drain()
    assert len(published(bus, InvoiceSent)) == 1


async def _ignore(event: InvoiceSent) -> None: ...
