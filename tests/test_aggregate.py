"""Aggregates and the given/when/then helper: state only changes by applying events."""

from __future__ import annotations

import pytest

from eventbus import ConfigurationError, Event
from eventbus.aggregate import Aggregate, applies
from eventbus.testing.aggregates import given


class OrderPlaced(Event):
    event_type = "shop.order.placed"
    order_id: str
    items: list[str]


class OrderShipped(Event):
    event_type = "shop.order.shipped"
    order_id: str
    carrier: str


class OrderCancelled(Event):
    event_type = "shop.order.cancelled"
    order_id: str


class Order(Aggregate):
    def __init__(self, id: str) -> None:
        super().__init__(id)
        self.status = "new"
        self.items: list[str] = []

    def place(self, items: list[str]) -> None:
        if self.status != "new":
            raise ValueError(f"order {self.id} is already {self.status}")
        self.record(OrderPlaced(order_id=self.id, items=items))

    def ship(self, carrier: str) -> None:
        if self.status != "placed":
            raise ValueError(f"order {self.id} is not placed but {self.status}")
        self.record(OrderShipped(order_id=self.id, carrier=carrier))

    def careless_cancel(self) -> None:
        """A bug the helper must catch: it records, then refuses."""
        self.record(OrderCancelled(order_id=self.id))
        raise ValueError("changed my mind")

    @applies(OrderPlaced)
    def _placed(self, event: OrderPlaced) -> None:
        self.status, self.items = "placed", list(event.items)

    @applies(OrderShipped)
    def _shipped(self, event: OrderShipped) -> None:
        self.status = "shipped"

    @applies(OrderCancelled)
    def _cancelled(self, event: OrderCancelled) -> None:
        self.status = "cancelled"


def test_a_command_records_events_that_change_the_state() -> None:
    order = (
        given(Order, id="o-1")
        .when(lambda o: o.place(["book"]))
        .then(OrderPlaced(order_id="o-1", items=["book"]))
    )
    assert (order.status, order.items, order.version) == ("placed", ["book"], 1)
    assert order.pending == [OrderPlaced(order_id="o-1", items=["book"])]


def test_state_is_rebuilt_from_past_events_in_order() -> None:
    past = [OrderPlaced(order_id="o-1", items=["book"])]
    order = (
        given(Order, past, id="o-1")
        .when(lambda o: o.ship("post"))
        .then(OrderShipped(order_id="o-1", carrier="post"))
    )
    assert (order.status, order.version, len(order.pending)) == ("shipped", 2, 1)
    order.mark_saved()
    assert order.pending == []
    assert order.version == 2


def test_then_raises_checks_the_refusal_and_that_nothing_was_recorded() -> None:
    given(Order).when(lambda o: o.ship("post")).then_raises(ValueError, match="not placed")
    with pytest.raises(AssertionError, match="only after recording \\[OrderCancelled\\]"):
        given(Order).when(lambda o: o.careless_cancel()).then_raises(ValueError)
    with pytest.raises(AssertionError, match="raised nothing"):
        given(Order).when(lambda o: o.place(["x"])).then_raises(ValueError)
    with pytest.raises(AssertionError, match="recorded \\[OrderPlaced\\], expected nothing"):
        given(Order).when(lambda o: o.place(["x"])).then()


def test_an_event_without_a_method_is_a_clear_error() -> None:
    class Draft(Aggregate):
        pass

    with pytest.raises(ConfigurationError, match="mark one with @applies\\(OrderPlaced\\)"):
        Draft.rehydrate("d-1", [OrderPlaced(order_id="d-1", items=[])])


def test_one_class_applies_an_event_once_and_a_subclass_may_replace_it() -> None:
    with pytest.raises(ConfigurationError, match="applies OrderPlaced twice"):

        class Twice(Aggregate):
            @applies(OrderPlaced)
            def _a(self, event: OrderPlaced) -> None: ...

            @applies(OrderPlaced)
            def _b(self, event: OrderPlaced) -> None: ...

    class Express(Order):
        @applies(OrderShipped)
        def _express(self, event: OrderShipped) -> None:
            self.status = f"shipped by {event.carrier}"

    order = Express.rehydrate(
        "e-1", [OrderPlaced(order_id="e-1", items=[]), OrderShipped(order_id="e-1", carrier="x")]
    )
    assert order.status == "shipped by x"


def test_a_snapshot_restores_the_same_state_at_its_version() -> None:
    order = Order.rehydrate("o-1", [OrderPlaced(order_id="o-1", items=["a", "b"])])
    copy = Order.restore("o-1", order.snapshot(), order.version)
    assert (copy.status, copy.items, copy.version) == ("placed", ["a", "b"], 1)
    copy.catch_up([OrderShipped(order_id="o-1", carrier="post")])
    assert (copy.status, copy.version, copy.pending) == ("shipped", 2, [])


class CardIssued(Event):
    event_type = "bank.card.issued"
    expires_at: float


class CardExpired(Event):
    event_type = "bank.card.expired"


class Card(Aggregate):
    def __init__(self, id: str) -> None:
        super().__init__(id)
        self.expires_at = 0.0

    def expire(self, now: float) -> None:
        if now < self.expires_at:
            raise ValueError("the card is still valid")
        self.record(CardExpired())

    @applies(CardIssued)
    def _issued(self, event: CardIssued) -> None:
        self.expires_at = event.expires_at

    @applies(CardExpired)
    def _expired(self, event: CardExpired) -> None:
        self.expires_at = -1.0


def test_a_command_may_take_the_scenarios_fake_clock() -> None:
    from eventbus.testing import FakeClock

    issued = [CardIssued(expires_at=100.0)]
    given(Card, issued).when(lambda card, clock: card.expire(clock.now())).then_raises(
        ValueError, match="still valid"
    )
    later = FakeClock(start=150.0)
    given(Card, issued, clock=later).when(lambda card, clock: card.expire(clock.now())).then(
        CardExpired()
    )
