"""What publishing refuses and what it carries: non-JSON numbers, size, correlation ids."""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import ConfigDict

from eventbus import ConfigurationError, Context, Event, EventBus, PublishError, Router
from eventbus.brokers.memory import MemoryBroker
from eventbus.testing import published

pytestmark = pytest.mark.anyio


class Price(Event):
    amount: float


class Basket(Event):
    prices: dict[str, float]
    extra: Any = None


class Text(Event):
    body: str


class LenientPrice(Event):
    model_config = ConfigDict(ser_json_inf_nan="strings")
    amount: float


@pytest.mark.parametrize(
    "event",
    [
        Price(amount=float("nan")),
        Price(amount=float("inf")),
        Price(amount=float("-inf")),
        Basket(prices={"a": 1.0, "b": float("nan")}),
        Basket(prices={}, extra=[1, float("inf")]),
    ],
)
async def test_nan_and_infinity_fail_the_publish_and_nothing_is_sent(event: Event) -> None:
    async with EventBus("memory://") as bus:
        with pytest.raises(PublishError, match=r"JSON cannot represent.*ser_json_inf_nan"):
            await bus.publish(event)
        with pytest.raises(PublishError):
            await bus.publish_many([Price(amount=1.0), event])
        assert published(bus) == []


async def test_text_that_merely_says_nan_or_infinity_is_published() -> None:
    async with EventBus("memory://") as bus:
        sent = await bus.publish(Text(body='NaN, Infinity and "-Infinity"'))
    assert Text.model_validate_json(sent.data).body == 'NaN, Infinity and "-Infinity"'


async def test_a_model_can_send_nan_on_purpose_as_strings() -> None:
    router, got = Router(), list[float]()

    @router.subscribe(LenientPrice)
    async def handle(event: LenientPrice) -> None:
        got.append(event.amount)

    async with EventBus("memory://", routers=[router]) as bus:
        await bus.publish(LenientPrice(amount=float("nan")))
        await bus.publish(LenientPrice(amount=float("-inf")))
        await bus.drain()
    assert math.isnan(got[0])
    assert got[1] == float("-inf")


async def test_a_payload_over_max_message_bytes_is_refused_on_the_memory_bus() -> None:
    limit = MemoryBroker().max_message_bytes
    assert limit == 1_000_000  # Kafka's, the strictest network default
    just_fits = Text(body="x" * (limit - len('{"body":""}')))
    async with EventBus("memory://") as bus:
        assert len((await bus.publish(just_fits)).data) == limit
        with pytest.raises(PublishError, match="over this bus's max_message_bytes of 1000000"):
            await bus.publish(Text(body="x" * limit))
        with pytest.raises(PublishError, match="max_message_bytes"):
            await bus.publish_many([Text(body="small"), Text(body="x" * limit)])
        assert len(published(bus)) == 1  # the batch sent nothing


async def test_max_message_bytes_is_configurable_and_checked() -> None:
    async with EventBus("memory://", max_message_bytes=100) as bus:
        assert bus.max_message_bytes == 100
        with pytest.raises(PublishError, match="max_message_bytes of 100"):
            await bus.publish(Text(body="x" * 100))
        big = bus.broker.max_message_bytes
        assert big == 100
    with pytest.raises(ConfigurationError, match="positive whole number of bytes"):
        EventBus("memory://", max_message_bytes=0)
    with pytest.raises(ConfigurationError, match=r"pass them to MemoryBroker\(...\) instead"):
        EventBus(MemoryBroker(), max_message_bytes=100)


async def test_publish_envelope_is_size_checked_too() -> None:
    async with EventBus("memory://", max_message_bytes=10) as small:
        async with EventBus("memory://") as big:
            envelope = await big.publish(Text(body="more than ten bytes"))
        with pytest.raises(PublishError):
            await small.publish_envelope(envelope)


async def test_a_flow_can_start_with_its_own_correlation_id() -> None:
    router, seen = Router(), list[Any]()

    @router.subscribe(Price)
    async def follow_up(event: Price, ctx: Context) -> None:
        await ctx.publish(Text(body="priced"))

    @router.subscribe(Text)
    async def last(event: Text, ctx: Context) -> None:
        seen.append(ctx.envelope)

    async with EventBus("memory://", routers=[router]) as bus:
        root = await bus.publish(Price(amount=1.0), correlation_id="req-42")
        [a, b] = await bus.publish_many([Text(body="1"), Text(body="2")], correlation_id="batch-7")
        await bus.drain()
    assert root.correlationid == "req-42"
    assert root.causationid is None
    assert (a.correlationid, b.correlationid) == ("batch-7", "batch-7")
    [caused] = [e for e in seen if e.causationid == root.id]
    assert caused.correlationid == "req-42"


async def test_a_correlation_id_must_be_text_and_is_not_a_header() -> None:
    async with EventBus("memory://") as bus:
        with pytest.raises(ConfigurationError, match="non-empty string"):
            await bus.publish(Price(amount=1.0), correlation_id="")
        with pytest.raises(ConfigurationError, match=r"correlation_id=\.\.\."):
            await bus.publish(Price(amount=1.0), headers={"correlationid": "x"})
        with pytest.raises(ConfigurationError, match=r"key=\.\.\."):
            await bus.publish(Price(amount=1.0), headers={"partitionkey": "x"})
