"""The order-flow example: choreography and the saga side by side, on the memory bus and SQLite.

Each variant runs in-process, so the test reads what each service did (the shop's journal,
stock and payments), the order's status in the read model and the saga's; one subprocess run
per failure checks the command itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from examples.order_flow import __main__ as order_flow
from examples.order_flow.domain import Faults, Shop
from tests.examples.processes import run_example

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def _own_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'orders.db'}")
    monkeypatch.delenv("EVENTBUS_URL", raising=False)


def steps(shop: Shop) -> list[str]:
    """What the shop did, in order, without the order ids: ["reserve", "charge", ...]."""
    return [entry.split()[0] for entry in shop.journal]


async def test_both_variants_confirm_an_order_that_goes_through() -> None:
    choreographed, orchestrated = Shop(), Shop()
    assert await order_flow.run("choreography", choreographed) == ("confirmed", "-")
    assert await order_flow.run("saga", orchestrated) == ("confirmed", "completed")
    assert steps(choreographed) == ["charge", "reserve", "ship"]
    assert steps(orchestrated) == ["reserve", "charge", "ship"]


async def test_a_declined_payment_releases_the_stock_then_cancels_the_order() -> None:
    shop = Shop(faults=Faults(payment_declined=True))
    assert await order_flow.run("saga", shop) == ("cancelled", "compensated")
    assert steps(shop) == ["reserve", "release"]
    assert shop.stock == Shop().stock
    assert shop.charged == {}


async def test_a_shipment_timeout_is_compensated_by_the_saga_only() -> None:
    faults = Faults(shipping_silent=True)
    choreographed, orchestrated = Shop(faults=faults), Shop(faults=faults)
    # choreography: nobody waits for shipping, so the money and the stock stay taken
    assert await order_flow.run("choreography", choreographed) == ("placed", "-")
    assert choreographed.charged
    assert choreographed.reserved
    assert await order_flow.run("saga", orchestrated) == ("cancelled", "compensated")
    # the completed steps are undone in reverse order: refund, then release
    assert steps(orchestrated) == ["reserve", "charge", "refund", "release"]
    assert orchestrated.stock == Shop().stock
    assert orchestrated.charged == {}


@pytest.mark.parametrize("fail", ["payment", "shipment-timeout"])
def test_the_command_runs_and_shows_the_compensation(fail: str) -> None:
    run = run_example("examples.order_flow", "--fail", fail)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "saga         order 'cancelled' (the saga compensated)" in run.stdout
