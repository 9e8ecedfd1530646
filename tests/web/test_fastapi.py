"""The bus in a FastAPI app, driven through httpx: the lifespan, the bus dependency, and an
endpoint whose row and outbox event commit together (or, on failure, neither)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from eventbus import EventBus
from eventbus.errors import ConfigurationError
from eventbus.fastapi import get_bus, lifespan
from eventbus.outbox import Outbox
from tests.web.shop import Shop, make_shop

pytestmark = pytest.mark.anyio


@pytest.fixture
async def shop(engine: AsyncEngine, outbox: Outbox) -> AsyncIterator[Shop]:
    made = await make_shop(engine, outbox)
    async with made.app.router.lifespan_context(made.app):
        yield made


async def test_the_lifespan_runs_the_bus_around_the_apps_own_lifespan() -> None:
    bus = EventBus("memory://", service="shop")
    seen: list[str] = []

    class Service:
        async def __aenter__(self) -> None:
            seen.append(f"service up, bus running={bus.running}")

        async def __aexit__(self, *exc: object) -> None:
            seen.append(f"service down, bus running={bus.running}")

    @asynccontextmanager
    async def own(app: Any) -> AsyncIterator[dict[str, Any]]:
        seen.append(f"app up, bus running={bus.running}")
        yield {"db": "pool"}
        seen.append(f"app down, bus running={bus.running}")

    app = FastAPI(lifespan=lifespan(bus, own, services=[Service()]))
    async with app.router.lifespan_context(app) as state:
        assert state == {"db": "pool", "eventbus": bus}
        assert app.state.eventbus is bus
    assert seen == [
        "service up, bus running=True",
        "app up, bus running=True",
        "app down, bus running=True",
        "service down, bus running=True",
    ]
    assert not bus.running
    assert not hasattr(app.state, "eventbus")


async def test_the_lifespan_needs_no_lifespan_of_the_app() -> None:
    bus = EventBus("memory://")
    app = FastAPI(lifespan=lifespan(bus))
    async with app.router.lifespan_context(app) as state:
        assert state == {"eventbus": bus}
        assert bus.running
    assert not bus.running


async def test_an_order_and_its_event_commit_together(shop: Shop) -> None:
    async with shop.client() as client:
        response = await client.post("/orders", json={"order_id": "o-1", "total": 42})
    assert response.status_code == 201, response.text
    assert await shop.saved() == ["o-1"]
    assert await shop.published() == ["o-1"]
    assert response.json()["source"] == "shop"


@pytest.mark.parametrize(("fail", "status"), [("http", 409), ("crash", 500)])
async def test_a_failing_endpoint_saves_nothing_and_publishes_nothing(
    shop: Shop, fail: str, status: int
) -> None:
    async with shop.client() as client:
        response = await client.post("/orders", json={"order_id": "o-2", "total": 1, "fail": fail})
    assert response.status_code == status
    assert shop.runs == 1  # the row and the event were written, then rolled back
    assert await shop.saved() == []
    assert await shop.published() == []


async def test_dependency_overrides_replace_the_bus(shop: Shop, outbox: Outbox) -> None:
    double = EventBus("memory://", service="test-double", outbox=outbox)
    shop.app.dependency_overrides[get_bus] = lambda: double
    async with shop.client() as client:
        service = await client.get("/service")
        placed = await client.post("/orders", json={"order_id": "o-3", "total": 5})
    assert service.json() == {"service": "test-double"}
    assert placed.json()["source"] == "test-double"  # the publisher used the override too
    shop.app.dependency_overrides.clear()
    async with shop.client() as client:
        assert (await client.get("/service")).json() == {"service": "shop"}


async def test_without_the_lifespan_get_bus_says_what_to_add(
    engine: AsyncEngine, outbox: Outbox
) -> None:
    shop = await make_shop(engine, outbox)  # its lifespan never ran
    transport = httpx.ASGITransport(app=shop.app)  # the app's error reaches the test
    async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
        with pytest.raises(ConfigurationError, match=r"lifespan=eventbus\.fastapi\.lifespan"):
            await client.get("/service")
