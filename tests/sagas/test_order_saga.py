"""The orchestrated order saga on the memory bus, driven step by step with a fake clock."""

from __future__ import annotations

import pytest

from eventbus.sagas import COMPENSATED, COMPENSATION_FAILED, COMPLETED, SagaNotResumable
from eventbus.testing.sagas import SagaScenario
from tests.sagas.orderflow import FLOW, Faults, OrderCreated, order_saga, services

pytestmark = pytest.mark.anyio

SENT = {
    "shop.stock.reserve", "shop.payment.charge", "shop.shipment.schedule",
    "shop.stock.release", "shop.payment.refund", "shop.order.cancel", "shop.order.confirmed",
}  # fmt: skip


def sent(scenario: SagaScenario) -> list[str]:
    """What the saga published (its commands and outcomes), in order."""
    return [t for t in scenario.types() if t in SENT]


async def test_the_happy_path_runs_every_step_once_and_completes() -> None:
    faults = Faults()
    saga = order_saga(faults)
    async with SagaScenario(saga, routers=[services(faults)]) as scenario:
        await scenario.publish(OrderCreated(order_id="o-1", amount=30), key="o-1")
        instance = await scenario.instance(saga, "o-1")
    assert sent(scenario) == [*FLOW, "shop.order.confirmed"]
    assert instance.status == COMPLETED
    assert instance.state.payment_id == "pay-o-1"
    assert [t.cause for t in instance.history] == [
        "shop.order.created", "shop.stock.reserved", "shop.payment.processed",
        "shop.shipment.scheduled",
    ]  # fmt: skip
    assert instance.timers == ()  # the step timeouts were cancelled


async def test_a_failed_payment_releases_the_stock_then_cancels_the_order() -> None:
    faults = Faults(payment="declined")
    saga = order_saga(faults)
    async with SagaScenario(saga, routers=[services(faults)]) as scenario:
        await scenario.publish(OrderCreated(order_id="o-2", amount=30), key="o-2")
        instance = await scenario.instance(saga, "o-2")
    assert sent(scenario) == [*FLOW[:2], "shop.stock.release", "shop.order.cancel"]
    assert instance.status == COMPENSATED
    assert instance.history[2].error == "step charge_payment failed (shop.payment.failed: declined)"
    assert [t.cause for t in instance.history[3:]] == [
        "compensate:reserve_stock", "compensate:(on_compensated)",
    ]  # fmt: skip


async def test_a_shipment_that_times_out_refunds_then_releases() -> None:
    faults = Faults(shipping_answers=False)
    saga = order_saga(faults)
    async with SagaScenario(saga, routers=[services(faults)]) as scenario:
        await scenario.publish(OrderCreated(order_id="o-3", amount=30), key="o-3")
        waiting = await scenario.instance(saga, "o-3")
        assert waiting.phase == "schedule_shipment"
        assert [(t.kind, t.name) for t in waiting.timers] == [("timeout", "schedule_shipment")]
        await scenario.advance(59)
        assert sent(scenario) == FLOW  # not yet
        await scenario.advance(1)
        instance = await scenario.instance(saga, "o-3")
    assert sent(scenario) == [
        *FLOW, "shop.payment.refund", "shop.stock.release", "shop.order.cancel"
    ]  # fmt: skip
    assert instance.status == COMPENSATED
    assert instance.history[3].cause == "timeout:schedule_shipment"
    assert instance.history[3].at == waiting.history[-1].at + 60


async def test_the_awaited_event_cancels_the_timeout() -> None:
    faults = Faults()
    saga = order_saga(faults)
    async with SagaScenario(saga, routers=[services(faults)]) as scenario:
        await scenario.publish(OrderCreated(order_id="o-4", amount=30), key="o-4")
        await scenario.advance(3600)
        instance = await scenario.instance(saga, "o-4")
    assert instance.status == COMPLETED
    assert "shop.order.cancel" not in sent(scenario)


async def test_a_compensation_that_fails_twice_is_retried_with_its_own_budget() -> None:
    """The refund fails twice; it is tried again after 1 s and 10 s (the compensation's
    budget, whatever the failed step used) and succeeds; the release follows."""
    faults = Faults(shipping_answers=False, failures={"payments": 2})
    saga = order_saga(faults)
    async with SagaScenario(saga, routers=[services(faults)]) as scenario:
        await scenario.publish(OrderCreated(order_id="o-5", amount=30), key="o-5")
        await scenario.advance(60)
        first = await scenario.instance(saga, "o-5")
        assert (first.attempts, first.last_error) == (1, "ConnectionError: payments is unreachable")
        await scenario.advance(1)
        assert (await scenario.instance(saga, "o-5")).attempts == 2
        await scenario.advance(9.5)
        assert faults.calls["payments"] == 2
        await scenario.advance(0.5)
        instance = await scenario.instance(saga, "o-5")
    assert faults.calls["payments"] == 3
    assert instance.status == COMPENSATED
    assert sent(scenario)[-3:] == ["shop.payment.refund", "shop.stock.release", "shop.order.cancel"]
    assert sent(scenario).count("shop.payment.refund") == 1


async def test_a_compensation_that_always_fails_stops_the_saga_until_an_operator_resumes_it() -> (
    None
):
    faults = Faults(payment="declined", failures={"inventory": 100})
    saga = order_saga(faults)
    async with SagaScenario(saga, routers=[services(faults)]) as scenario:
        await scenario.publish(OrderCreated(order_id="o-6", amount=30), key="o-6")
        await scenario.advance(3600)
        stuck = await scenario.instance(saga, "o-6")
        assert stuck.status == COMPENSATION_FAILED
        assert faults.calls["inventory"] == 3  # one try and the two retries
        assert stuck.compensations == ("(on_compensated)", "reserve_stock")
        assert stuck.timers == ()
        assert [i.key for i in await saga.list(COMPENSATION_FAILED)] == ["o-6"]
        assert "shop.stock.release" not in sent(scenario)

        faults.failures["inventory"] = 0  # the inventory system is back
        resumed = await saga.resume("o-6")
        assert resumed.status == "compensating"
        await scenario.settle()
        instance = await scenario.instance(saga, "o-6")
        with pytest.raises(SagaNotResumable, match="is compensated"):
            await saga.resume("o-6")
        assert await saga.list(COMPENSATION_FAILED) == []
    assert instance.status == COMPENSATED
    assert sent(scenario)[-2:] == ["shop.stock.release", "shop.order.cancel"]
    assert [t.cause for t in instance.history if t.cause.startswith("operator")] == [
        "operator:resume"
    ]
