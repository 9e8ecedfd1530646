"""Upcasting on the bus: older payloads reach a handler as its model's version."""

from __future__ import annotations

from typing import Any

import pytest

from eventbus import ConfigurationError, Context, Event, EventBus, Router
from eventbus.upcasting import Upcasters

pytestmark = pytest.mark.anyio


class PlacedV1(Event):
    """What old producers still send: one name field, a price in cents."""

    event_type = "shop.order.placed"
    event_version = 1
    order_id: str
    customer: str
    cents: int


class PlacedV2(Event):
    event_type = "shop.order.placed"
    event_version = 2
    order_id: str
    first_name: str
    last_name: str
    cents: int


class OrderPlaced(Event):
    """The current model: version 3, the amount in currency units."""

    event_type = "shop.order.placed"
    event_version = 3
    order_id: str
    first_name: str
    last_name: str
    amount: float


def chain() -> Upcasters:
    upcasters = Upcasters()

    @upcasters.register(OrderPlaced, from_version=1)
    def split_name(data: dict[str, Any]) -> dict[str, Any]:
        first, _, last = data.pop("customer").partition(" ")
        return {**data, "first_name": first, "last_name": last}

    @upcasters.register(OrderPlaced, from_version=2)
    def to_units(data: dict[str, Any]) -> dict[str, Any]:
        return to_amount(data)

    return upcasters


def to_amount(data: dict[str, Any]) -> dict[str, Any]:
    """Version 2 → 3: cents become currency units."""
    cents = data.pop("cents")
    return {**data, "amount": cents / 100}


async def handled_by_v3(upcasters: Upcasters, *events: Event) -> list[tuple[OrderPlaced, int]]:
    """Publish ``events`` (any version) and return what a version 3 handler received, with
    the ``dataversion`` its context's envelope carried."""
    router, got = Router(), list[tuple[OrderPlaced, int]]()

    @router.subscribe(OrderPlaced, group="billing")
    async def bill(event: OrderPlaced, ctx: Context) -> None:
        got.append((event, ctx.envelope.dataversion or 0))

    async with EventBus("memory://", routers=[router], upcasters=upcasters) as bus:
        for event in events:
            await bus.publish(event)
        await bus.drain()
        assert await bus.dead_letters.list(group="billing") == []
    return got


async def test_every_older_version_is_upcast_through_the_chain() -> None:
    got = await handled_by_v3(
        chain(),
        PlacedV1(order_id="a", customer="Ada Lovelace", cents=1250),
        PlacedV2(order_id="b", first_name="Alan", last_name="Turing", cents=99),
        OrderPlaced(order_id="c", first_name="Grace", last_name="Hopper", amount=3.5),
    )
    assert got == [
        (OrderPlaced(order_id="a", first_name="Ada", last_name="Lovelace", amount=12.5), 3),
        (OrderPlaced(order_id="b", first_name="Alan", last_name="Turing", amount=0.99), 3),
        (OrderPlaced(order_id="c", first_name="Grace", last_name="Hopper", amount=3.5), 3),
    ]


async def test_a_step_without_an_upcaster_passes_the_payload_on() -> None:
    upcasters = Upcasters()
    upcasters.add(OrderPlaced, 2, to_amount)
    got = await handled_by_v3(
        upcasters,
        PlacedV2(order_id="b", first_name="Alan", last_name="Turing", cents=99),
    )
    assert [event.amount for event, _ in got] == [0.99]


async def test_an_upcaster_may_split_an_event_or_drop_it() -> None:
    """One v1 order for two customers becomes two v3 orders; one with no customer is dropped
    (acked, not dead-lettered, the handler never called)."""
    upcasters = Upcasters()

    @upcasters.register(OrderPlaced, from_version=1)
    def one_per_customer(data: dict[str, Any]) -> list[dict[str, Any]] | None:
        names = [name.strip() for name in data.pop("customer").split(",") if name.strip()]
        return [
            {**data, "first_name": name.split()[0], "last_name": name.split()[-1]} for name in names
        ] or None

    upcasters.add(OrderPlaced, 2, to_amount)
    got = await handled_by_v3(
        upcasters,
        PlacedV1(order_id="s", customer="Ada Lovelace, Alan Turing", cents=100),
        PlacedV1(order_id="d", customer="", cents=1),
    )
    assert [(e.order_id, e.last_name, e.amount) for e, _ in got] == [
        ("s", "Lovelace", 1.0),
        ("s", "Turing", 1.0),
    ]


async def test_an_upcaster_that_fails_dead_letters_the_event_with_the_reason() -> None:
    upcasters = Upcasters()

    @upcasters.register(OrderPlaced, from_version=1)
    def broken(data: dict[str, Any]) -> dict[str, Any]:
        raise KeyError("surname")

    router, got = Router(), list[OrderPlaced]()
    router.subscribe(OrderPlaced, group="billing")(_collect(got))
    async with EventBus("memory://", routers=[router], upcasters=upcasters) as bus:
        sent = await bus.publish(PlacedV1(order_id="x", customer="Ada", cents=1))
        await bus.drain()
        [letter] = await bus.dead_letters.list(group="billing")
    assert got == []
    assert letter.event_id == sent.id
    assert "could not be upcast from version 1 to 3" in letter.error_message
    assert "KeyError" in letter.error_message


async def test_without_upcasters_for_the_type_the_handler_gets_the_payload_as_sent() -> None:
    upcasters = Upcasters()
    upcasters.add("shop.invoice.sent", 1, lambda data: {**data, "touched": True})
    router, got = Router(), list[PlacedV2]()
    router.subscribe(PlacedV2, group="billing")(_collect(got))
    async with EventBus("memory://", routers=[router], upcasters=upcasters) as bus:
        await bus.publish(PlacedV1(order_id="x", customer="Ada", cents=1))
        await bus.drain()
        [letter] = await bus.dead_letters.list(group="billing")
    assert got == []
    assert "does not match PlacedV2" in letter.error_message  # validated as it came


def test_registrations_that_cannot_be_right_are_refused_at_once() -> None:
    upcasters = Upcasters()
    upcasters.add(OrderPlaced, 1, lambda data: data)
    with pytest.raises(ConfigurationError, match="already has an upcaster from version 1"):
        upcasters.add("shop.order.placed", 1, lambda data: data)
    with pytest.raises(ConfigurationError, match="nothing to upcast to: the model is version 3"):
        upcasters.add(OrderPlaced, 3, lambda data: data)
    for bad in (0, -1, True, "2"):
        with pytest.raises(ConfigurationError, match="from_version must be a positive integer"):
            upcasters.add(OrderPlaced, bad, lambda data: data)  # type: ignore[arg-type]


def _collect(into: list[Any]) -> Any:
    async def handle(event) -> None:  # type: ignore[no-untyped-def]  # any subscribed class
        into.append(event)

    return handle


def test_the_chain_skips_steps_that_need_no_upcaster() -> None:
    upcasters = Upcasters()
    upcasters.add("shop.order.placed", 2, to_amount)
    assert upcasters.upcast("shop.order.placed", 1, {"cents": 250}, 3) == [{"amount": 2.5}]
    assert upcasters.upcast("shop.order.placed", 3, {"amount": 1.0}, 3) == [{"amount": 1.0}]
