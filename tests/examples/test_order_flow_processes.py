"""The order-flow saga with each service as its own process, on Redis.

The order service (with the saga, its timer worker and the outbox relay) under uvicorn and the
inventory, payment and shipping services under ``eventbus worker run``, from the Procfile.
Shipping never answers, so the saga's durable timeout fires in the order service's process and
the compensations go out to the other processes: checked by the order's status and the saga's
recorded history.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from eventbus.outbox import Outbox
from eventbus.sagas import SqlSagaStore
from eventbus.testing import wait_until
from examples.order_flow.orchestration import order_saga
from tests.examples.processes import DEADLINE, ROOT, Services, environment, free_port, services_of

pytestmark = [pytest.mark.anyio, pytest.mark.redis, pytest.mark.slow]
PROCFILE = ROOT / "examples" / "order_flow" / "Procfile"


@pytest.fixture
def services(tmp_path: Path, redis_url: str, prefix: str) -> Iterator[Services]:
    env = environment(
        ORDER_FLOW="saga",
        ORDER_FLOW_FAIL="shipment-timeout",
        EVENTBUS_URL=redis_url,
        EVENTBUS_OPTIONS=json.dumps({"prefix": prefix}),
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'orders.db'}",
        ORDERS_PORT=str(free_port()),
    )
    with services_of(PROCFILE, "examples.order_flow.apps", env, tmp_path) as running:
        yield running


async def test_a_shipment_timeout_is_compensated_across_processes(
    services: Services, tmp_path: Path
) -> None:
    for name in services.commands:
        services.start(name)
    await wait_until(lambda: all(map(services.ready, services.commands)), timeout=DEADLINE)
    orders = f"http://127.0.0.1:{services.env['ORDERS_PORT']}"
    async with httpx.AsyncClient(base_url=orders, timeout=10) as client:
        order = {"sku": "book-42", "quantity": 1, "amount_cents": 2500}
        key = {"Idempotency-Key": "order-flow-test-1"}
        placed = (await client.post("/orders", json=order, headers=key)).raise_for_status().json()
        again = await client.post("/orders", json=order, headers=key)  # a client's retry
        assert again.json() == placed  # the same order, not a second one
        assert again.headers["Idempotent-Replayed"] == "true"

        async def cancelled() -> bool:
            view = (await client.get(f"/orders/{placed['order_id']}")).json()
            return bool(view["status"] == "cancelled")

        await wait_until(cancelled, timeout=DEADLINE)

    engine = create_async_engine(services.env["DATABASE_URL"])
    saga = order_saga()
    saga.store = SqlSagaStore(engine, outbox=Outbox())  # the same tables, read only
    instance = await saga.show(placed["order_id"])
    await engine.dispose()
    assert instance.status == "compensated"
    causes = [t.cause for t in instance.history]
    assert "timeout:schedule_shipment" in causes
    undone = [c for c in causes if c.startswith("compensate:")]
    # the completed steps in reverse order, then the saga's own ending (cancel the order)
    assert undone == [
        "compensate:charge_payment",
        "compensate:reserve_stock",
        "compensate:(on_compensated)",
    ]
    assert "refunded" in services.output("payments")
    assert "released the stock" in services.output("inventory")

    exits = await services.stop_all()
    assert exits.pop("orders") in (0, -signal.SIGTERM)  # uvicorn ends by re-raising the signal
    assert exits == {"inventory": 0, "payments": 0, "shipping": 0}
