"""The receiver helper on the other side: the real sender's requests go into a FastAPI app
(and a plain ASGI app) through the receiver helper, which verifies them, refuses forged or
stale ones, and runs the endpoint once per ``webhook-id`` — a failed run is retried, a
replay of a handled one is recognised.

No ``from __future__ import annotations`` here: FastAPI reads the endpoint's annotations,
which name a local dependency."""

import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from eventbus.clock import FakeClock
from eventbus.errors import ConfigurationError
from eventbus.middleware import MemoryIdempotencyStore, SqlIdempotencyStore
from eventbus.webhooks import (
    ReceivedWebhook,
    RetrySchedule,
    WebhookReceiver,
    WebhookSender,
    WebhookStore,
    generate_secret,
    signature_headers,
)
from eventbus.webhooks.asgi import webhook_app
from eventbus.webhooks.dependency import webhook_dependency
from tests.webhooks.conftest import LOOPBACK
from tests.webhooks.support import event

pytestmark = pytest.mark.anyio

URL = "http://127.0.0.1/hooks"  # the ASGI transport answers it in process


class Orders:
    """What the receiving application does with the webhooks it gets."""

    def __init__(self, fail_first: int = 0) -> None:
        self.handled: list[Any] = []
        self.fail_first = fail_first

    async def handle(self, webhook: ReceivedWebhook) -> None:
        if self.fail_first:
            self.fail_first -= 1
            raise RuntimeError("the database is down")
        self.handled.append(webhook.data)


def fastapi_app(receiver: WebhookReceiver, orders: Orders) -> FastAPI:
    app = FastAPI()
    receive = webhook_dependency(receiver)

    @app.post("/hooks")
    async def on_webhook(webhook: Annotated[ReceivedWebhook, Depends(receive)]) -> dict[str, str]:
        await orders.handle(webhook)
        return {"status": "ok"}

    return app


def app_for(kind: str, receiver: WebhookReceiver, orders: Orders) -> Any:
    return (
        fastapi_app(receiver, orders) if kind == "fastapi" else webhook_app(receiver, orders.handle)
    )


@pytest.fixture
async def sql_ids(engine: AsyncEngine, clock: FakeClock) -> AsyncIterator[SqlIdempotencyStore]:
    made = SqlIdempotencyStore(engine, table=f"ids_{uuid.uuid4().hex[:10]}", now=clock.now)
    await made.create_table()
    yield made
    async with engine.begin() as connection:
        await connection.run_sync(made.table.metadata.drop_all)


@pytest.mark.parametrize("kind", ["fastapi", "asgi"])
async def test_each_webhook_runs_once_through_failures_and_replays(
    kind: str, store: WebhookStore, sql_ids: SqlIdempotencyStore, clock: FakeClock
) -> None:
    endpoint = await store.endpoints.add("acme", URL, ["#"])
    receiver = WebhookReceiver(endpoint.secret, store=sql_ids, now=clock.now)
    orders = Orders(fail_first=1)
    app = (
        fastapi_app(receiver, orders) if kind == "fastapi" else webhook_app(receiver, orders.handle)
    )
    # As a server would, the transport answers 500 when the application raises.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    client = httpx.AsyncClient(transport=transport)
    schedule = RetrySchedule(delays=(0, 5), jitter=0)
    sender = WebhookSender(store, guard=LOOPBACK, client=client, schedule=schedule)
    sent = event(order=7)
    await store.take(sent)
    assert await sender.run_once() == 1
    assert orders.handled == []
    await clock.advance(5)
    assert await sender.run_once() == 1
    assert orders.handled == [{"order": 7}]
    [delivery] = await store.deliveries.list()
    await store.deliveries.replay(delivery.id)  # an operator sends it again: same webhook-id
    assert await sender.run_once() == 1
    await sender.stop()
    await client.aclose()
    assert orders.handled == [{"order": 7}], "the replay was recognised, not processed"
    statuses = [a.status_code for a in reversed(await store.deliveries.attempts(endpoint.id))]
    assert statuses == ([500, 200, 200] if kind == "fastapi" else [500, 204, 204])


@pytest.mark.parametrize("kind", ["fastapi", "asgi"])
async def test_forged_stale_and_busy_requests_are_refused(kind: str, clock: FakeClock) -> None:
    secret = generate_secret()
    ids = MemoryIdempotencyStore(clock=clock)
    receiver = WebhookReceiver(secret, store=ids, now=clock.now)
    orders = Orders()
    app = (
        fastapi_app(receiver, orders) if kind == "fastapi" else webhook_app(receiver, orders.handle)
    )
    body = b'{"type":"order.placed","timestamp":"2026-01-01T00:00:00Z","data":{"order":1}}'
    stamp = int(clock.now())
    headers = signature_headers(secret, "msg_1", stamp, body)
    forged = signature_headers(generate_secret(), "msg_1", stamp, body)
    stale = signature_headers(secret, "msg_1", stamp - 301, body)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://receiver",
    ) as client:
        assert (await client.post("/hooks", content=body, headers=forged)).status_code == 401
        assert (await client.post("/hooks", content=body, headers=stale)).status_code == 401
        await ids.claim("webhooks", "msg_1", owner="another process", lease=30)
        busy = await client.post("/hooks", content=body, headers=headers)
        assert (busy.status_code, busy.headers["retry-after"]) == (503, "30")
        await clock.advance(30)  # that process died: its lease runs out
        assert (await client.post("/hooks", content=body, headers=headers)).is_success
        again = await client.post("/hooks", content=body, headers=headers)
        assert again.is_success
    assert orders.handled == [{"order": 1}]


def test_a_retention_shorter_than_the_retry_horizon_fails_at_start_up() -> None:
    secret = generate_secret()
    with pytest.raises(ConfigurationError, match="forgets a webhook-id before the sender"):
        WebhookReceiver(secret, store=MemoryIdempotencyStore(), retention=300)
    short = RetrySchedule(delays=(0, 60, 600))
    WebhookReceiver(secret, store=MemoryIdempotencyStore(), retention=3600, horizon=short.horizon)
    WebhookReceiver(secret, retention=1)  # no store: nothing is remembered at all
