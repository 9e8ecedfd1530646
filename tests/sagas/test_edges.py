"""What a saga does with events it cannot apply: for no instance, a second start, a repeated
delivery, a step that raises, a late reply; and how the declaration is checked."""

from __future__ import annotations

import logging

import pytest
from pydantic import BaseModel

from eventbus import EventBus, PermanentError
from eventbus.errors import ConfigurationError
from eventbus.sagas import (
    COMPENSATED,
    MemorySagaStore,
    Saga,
    SagaNotFound,
    SagaStep,
    SagaWorker,
)
from eventbus.testing import FakeClock, published
from eventbus.testing.sagas import SagaScenario
from eventbus.upcasting import Upcasters
from tests.sagas.orderflow import (
    Faults,
    OrderCreated,
    PaymentProcessed,
    ShipmentScheduled,
    StockReserved,
    order_saga,
    services,
)

pytestmark = pytest.mark.anyio


async def test_an_event_for_no_instance_is_ignored_with_a_log_and_creates_none(
    caplog: pytest.LogCaptureFixture,
) -> None:
    saga = order_saga(Faults())
    async with SagaScenario(saga) as scenario:
        with caplog.at_level(logging.WARNING, "eventbus.sagas"):
            await scenario.publish(StockReserved(order_id="nobody"), key="nobody")
        assert await saga.list() == []
        with pytest.raises(SagaNotFound, match="'nobody'"):
            await saga.show("nobody")
        assert await scenario.bus.dead_letters.list() == []
    assert "names instance 'nobody', which does not exist; ignored" in caplog.text


async def test_an_event_for_no_instance_can_be_dead_lettered_instead() -> None:
    saga = order_saga(Faults(), on_missing="dead_letter")
    async with SagaScenario(saga) as scenario:
        await scenario.publish(StockReserved(order_id="nobody"), key="nobody")
        letters = await scenario.bus.dead_letters.list()
        assert await saga.list() == []
    assert [letter.event_type for letter in letters] == ["shop.stock.reserved"]
    assert letters[0].error_type == "eventbus.sagas.records.SagaNotFound"
    assert "has no instance 'nobody'" in letters[0].error_message


async def test_a_second_start_event_and_a_redelivered_one_change_nothing() -> None:
    faults = Faults(shipping_answers=False)
    saga = order_saga(faults)
    async with SagaScenario(saga, routers=[services(faults)]) as scenario:
        first = await scenario.publish(OrderCreated(order_id="o-1", amount=30), key="o-1")
        before = await scenario.instance(saga, "o-1")
        await scenario.publish(OrderCreated(order_id="o-1", amount=999), key="o-1")
        await scenario.publish_envelope(first)  # the same event delivered again
        reply = published(scenario.bus, PaymentProcessed)[0]
        await scenario.publish_envelope(reply)  # a reply delivered twice
        after = await scenario.instance(saga, "o-1")
    assert after == before
    assert after.state.amount == 30
    assert scenario.types().count("shop.stock.reserve") == 1


async def test_a_step_that_raises_a_permanent_error_fails_the_saga_and_keeps_nothing_of_it() -> (
    None
):
    """The payment step refuses before sending anything that counts: what it published is
    dropped with it, and the completed stock reservation is compensated."""
    faults = Faults(payment="refused here")
    saga = order_saga(faults)
    async with SagaScenario(saga, routers=[services(faults)]) as scenario:
        await scenario.publish(OrderCreated(order_id="o-2", amount=30), key="o-2")
        instance = await scenario.instance(saga, "o-2")
    assert instance.status == COMPENSATED
    assert "shop.payment.charge" not in scenario.types()
    assert scenario.types()[-2:] == ["shop.stock.release", "shop.order.cancel"]
    assert sorted(faults.done) == ["shop.order.cancel", "shop.stock.release"]
    assert instance.history[1].error == (
        "step charge_payment failed: PermanentError: the card is blocked"
    )


async def test_declarations_are_checked_when_they_are_made() -> None:
    class State(BaseModel):
        n: int = 0

    with pytest.raises(ConfigurationError, match="on_missing must be 'ignore'"):
        Saga("x", State, key="order_id", on_missing="create")
    saga = Saga("x", State, key="order_id")
    saga.starts(OrderCreated)(lambda event, step: None)
    with pytest.raises(ConfigurationError, match="starts on OrderCreated"):
        saga.on(OrderCreated)(lambda event, step: None)
    with pytest.raises(ConfigurationError, match="no store"):
        await saga.list()
    with pytest.raises(ConfigurationError, match="no store yet"):
        saga.router()
    with pytest.raises(ConfigurationError, match="share one store"):
        SagaWorker(EventBus("memory://"), [saga])
    saga.store = MemorySagaStore()
    assert SagaWorker(EventBus("memory://", clock=FakeClock()), [saga]).store is saga.store


async def test_a_reply_that_arrives_after_its_timeout_changes_nothing() -> None:
    faults = Faults(shipping_answers=False)
    saga = order_saga(faults)
    async with SagaScenario(saga, routers=[services(faults)]) as scenario:
        await scenario.publish(OrderCreated(order_id="o-7", amount=30), key="o-7")
        await scenario.advance(60)
        before = await scenario.instance(saga, "o-7")
        await scenario.publish(ShipmentScheduled(order_id="o-7"), key="o-7")
        after = await scenario.instance(saga, "o-7")
    assert before.status == COMPENSATED
    assert after == before


async def test_state_stored_by_an_older_version_is_upcast_when_read() -> None:
    class Old(BaseModel):
        order_id: str
        total: int = 0

    class New(BaseModel):
        order_id: str
        amount: int

    upcasters = Upcasters()

    @upcasters.register("saga.billing", from_version=1)
    def rename(data: dict[str, object]) -> dict[str, object]:
        return {"order_id": data["order_id"], "amount": data["total"]}

    old: Saga[Old] = Saga("billing", Old, key="order_id")

    @old.starts(OrderCreated)
    def start(event: OrderCreated, step: SagaStep[Old]) -> None:
        step.state = Old(order_id=event.order_id, total=event.amount)

    async with SagaScenario(old) as scenario:
        await scenario.publish(OrderCreated(order_id="b-1", amount=12), key="b-1")
    new: Saga[New] = Saga(
        "billing", New, key="order_id", store=scenario.store, upcasters=upcasters, state_version=2
    )
    assert (await new.show("b-1")).state == New(order_id="b-1", amount=12)


async def test_a_start_handler_that_refuses_creates_no_instance() -> None:
    class State(BaseModel):
        order_id: str

    saga: Saga[State] = Saga("refusing", State, key="order_id")

    @saga.starts(OrderCreated)
    def start(event: OrderCreated, step: SagaStep[State]) -> None:
        step.state = State(order_id=event.order_id)
        raise PermanentError("orders over 100 are not taken")

    async with SagaScenario(saga) as scenario:
        await scenario.publish(OrderCreated(order_id="big", amount=500), key="big")
        assert await saga.list() == []
        letters = await scenario.bus.dead_letters.list()
    assert [letter.event_type for letter in letters] == ["shop.order.created"]


async def test_an_event_without_its_key_is_dead_lettered() -> None:
    saga = order_saga(Faults())
    async with SagaScenario(saga) as scenario:
        await scenario.publish(StockReserved(order_id=""))
        letters = await scenario.bus.dead_letters.list()
    assert [letter.event_type for letter in letters] == ["shop.stock.reserved"]
    assert "has no 'order_id' to find its saga instance by" in letters[0].error_message
