"""Dead letters end to end on the memory broker: provenance, poison messages, replay, purge."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timezone

import pytest
from pydantic import BaseModel

from eventbus import (
    Context,
    DeadLetterNotFound,
    Envelope,
    Event,
    EventBus,
    Middleware,
    PermanentError,
    Router,
)
from eventbus.deadletters import FIRST_FAILURE_AT
from eventbus.middleware import Idempotency, MemoryIdempotencyStore, Retry
from eventbus.middleware import default_middleware as defaults
from tests.middleware.mwsupport import RecordingClock, settle, wait_for

pytestmark = pytest.mark.anyio

T0 = datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


class OrderPlaced(Event):
    order_id: str


class Seen:
    """What a handler saw: (order id, ctx.attempt) per call, and the ids it finished."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.done: list[str] = []
        self.ids: list[str] = []
        self.first_failures: list[str | None] = []  # what each call's delivery carried


@pytest.fixture
def seen() -> Seen:
    return Seen()


@pytest.fixture
def router(seen: Seen) -> Router:
    """``ok-*`` succeed, ``down-*`` always fail, ``bad-*`` fail permanently, ``model-*`` raise
    a pydantic ValidationError."""
    router = Router()

    @router.subscribe(OrderPlaced, group="billing")
    async def bill(event: OrderPlaced, ctx: Context) -> None:
        seen.calls.append((event.order_id, ctx.attempt))
        assert ctx.delivery is not None
        seen.first_failures.append(ctx.delivery.metadata.get(FIRST_FAILURE_AT))
        kind = event.order_id.split("-")[0]
        if kind == "down":
            raise OSError(f"payment service down for {event.order_id}")
        if kind == "bad":
            raise PermanentError(f"order {event.order_id} cannot be billed")
        if kind == "model":
            _Strict.model_validate({"n": "x"})  # a pydantic ValidationError from the handler
        seen.done.append(event.order_id)
        seen.ids.append(ctx.envelope.id)

    return router


class _Strict(BaseModel):
    n: int


@pytest.fixture
async def bus(router: Router, clock: RecordingClock) -> AsyncIterator[EventBus]:
    middleware: list[Middleware] = [Retry(tries=2, delays=(1, 10), jitter=0.0)]
    async with EventBus(
        "memory://", service="shop", routers=[router], clock=clock, middleware=middleware
    ) as bus:
        yield bus


async def test_an_eventbus_gets_retry_unless_told_otherwise() -> None:
    default = EventBus("memory://")
    assert [type(m) for m in default.middleware] == [Retry]
    assert [type(m) for m in defaults()] == [Retry]
    assert EventBus("memory://", middleware=()).middleware == ()


async def test_exhausted_retries_are_dead_lettered_with_full_provenance(
    bus: EventBus, seen: Seen, clock: RecordingClock
) -> None:
    sent = await bus.publish(OrderPlaced(order_id="down-1"), key="k1")
    await settle(bus, clock)
    # 2 tries per delivery, 3 deliveries (the first, then after 1 s and 10 s)
    assert seen.calls == [("down-1", a) for a in (1, 1, 2, 2, 3, 3)]
    [record] = await bus.dead_letters.list()
    assert record.reason == "retries exhausted after 3 deliveries"
    assert record.error_type == "builtins.OSError"
    assert record.error_message == "payment service down for down-1"
    assert "OSError: payment service down" in record.traceback
    assert record.attempts == 3
    assert record.destination == "OrderPlaced"
    assert record.group == "billing"
    assert record.subscription.endswith("bill")
    assert record.event_id == sent.id
    assert record.event_type == "OrderPlaced"
    # stamped when the first delivery failed, carried with each redelivery since
    assert seen.first_failures[:2] == [None, None]  # the first delivery's two tries
    assert record.first_failure_at is not None
    assert seen.first_failures[2:] == [record.first_failure_at.isoformat()] * 4
    assert record.last_failure_at is not None
    assert T0 < record.first_failure_at <= record.last_failure_at
    assert record.headers["ce_id"] == sent.id
    assert record.body == sent.data
    assert await bus.dead_letters.get(record.id) == record


async def test_a_delayed_retry_does_not_block_the_messages_behind_it(
    router: Router, seen: Seen, clock: RecordingClock
) -> None:
    middleware: list[Middleware] = [Retry(tries=1, delays=(60,))]
    async with EventBus("memory://", routers=[router], clock=clock, middleware=middleware) as bus:
        await bus.publish(OrderPlaced(order_id="down-1"), key="same")
        await bus.publish(OrderPlaced(order_id="ok-1"), key="same")
        await wait_for(lambda: seen.done == ["ok-1"] and not bus.busy)
        assert clock.now() == 0
        assert (bus.broker.pending() or {})["delayed"] == 1
        await clock.advance(60)
        await settle(bus, clock)
        assert seen.calls == [("down-1", 1), ("ok-1", 1), ("down-1", 2)]
        assert len(await bus.dead_letters.list()) == 1


async def test_permanent_errors_go_to_the_dlq_at_once_and_the_rest_flow_on(
    bus: EventBus, seen: Seen, clock: RecordingClock
) -> None:
    await bus.publish(OrderPlaced(order_id="bad-1"), key="k")
    await bus.publish(OrderPlaced(order_id="ok-2"), key="k")
    await settle(bus, clock)
    assert seen.calls == [("bad-1", 1), ("ok-2", 1)]
    [record] = await bus.dead_letters.list(group="billing")
    assert record.error_type == "eventbus.errors.PermanentError"
    assert record.reason == "permanent failure"
    assert record.attempts == 1
    assert clock.sleeps == []  # no backoff for a permanent failure


async def test_a_validation_error_raised_by_the_handler_is_not_retried(
    bus: EventBus, seen: Seen, clock: RecordingClock
) -> None:
    await bus.publish(OrderPlaced(order_id="model-1"))
    await settle(bus, clock)
    assert seen.calls == [("model-1", 1)]
    [record] = await bus.dead_letters.list()
    assert record.reason == "not retryable (ValidationError)"
    assert record.error_type.endswith("ValidationError")


async def test_a_payload_that_does_not_match_the_model_is_dead_lettered(
    bus: EventBus, seen: Seen, clock: RecordingClock
) -> None:
    envelope = Envelope(id="wrong-1", type="OrderPlaced", source="x", data=b'{"order": 1}')
    await bus.publish_envelope(envelope)
    await settle(bus, clock)
    assert seen.calls == []
    [record] = await bus.dead_letters.list()
    assert record.error_type == "eventbus.errors.PayloadValidationError"
    assert record.event_id == "wrong-1"
    assert record.body == b'{"order": 1}'


async def test_undecodable_bytes_are_kept_as_they_arrived(
    bus: EventBus, seen: Seen, clock: RecordingClock
) -> None:
    await bus.broker.send_raw("OrderPlaced", b"\xff\x00 not an event")  # type: ignore[attr-defined]
    await bus.publish(OrderPlaced(order_id="ok-3"))
    await settle(bus, clock)
    assert seen.done == ["ok-3"]
    [record] = await bus.dead_letters.list()
    assert record.reason == "undecodable"
    assert record.body == b"\xff\x00 not an event"
    assert record.event_id is None


async def test_replay_redelivers_with_the_same_event_id_and_a_fresh_attempt_count(
    bus: EventBus, seen: Seen, clock: RecordingClock
) -> None:
    sent = await bus.publish(OrderPlaced(order_id="down-2"))
    await settle(bus, clock)
    [record] = await bus.dead_letters.list()
    seen.calls.clear()
    # the fix: the handler now treats down-2 as healthy
    original = record.body
    assert b"down-2" in original
    await bus.dead_letters.replay(record.id)
    assert await bus.dead_letters.list() == []
    await settle(bus, clock)
    assert seen.calls[0][1] == 1  # attempts start again
    assert len(await bus.dead_letters.list()) == 1  # still broken: back in the DLQ
    [again] = await bus.dead_letters.list()
    assert again.event_id == sent.id
    with pytest.raises(DeadLetterNotFound):
        await bus.dead_letters.replay("no-such-id")


async def test_replay_of_an_event_handled_meanwhile_is_recognised_as_a_duplicate(
    clock: RecordingClock,
) -> None:
    router = Router()
    handled: list[str] = []
    broken = {"yes": True}

    @router.subscribe(OrderPlaced, group="billing")
    async def bill(event: OrderPlaced, ctx: Context) -> None:
        if broken["yes"]:
            raise PermanentError("not yet")
        handled.append(ctx.envelope.id)

    store = MemoryIdempotencyStore(clock=clock)
    middleware: list[Middleware] = [*defaults(), Idempotency(store)]
    async with EventBus("memory://", routers=[router], clock=clock, middleware=middleware) as bus:
        sent = await bus.publish(OrderPlaced(order_id="o-1"))
        await settle(bus, clock)
        [record] = await bus.dead_letters.list()
        broken["yes"] = False
        await bus.publish_envelope(sent)  # the producer's retry of the same event
        await settle(bus, clock)
        assert handled == [sent.id]
        await bus.dead_letters.replay(record.id)  # same id: idempotency still holds
        await settle(bus, clock)
        assert handled == [sent.id]
        assert await bus.dead_letters.list() == []


async def test_purge_by_group_and_all(bus: EventBus, clock: RecordingClock) -> None:
    await bus.publish(OrderPlaced(order_id="bad-1"))
    await bus.publish(OrderPlaced(order_id="bad-2"))
    await settle(bus, clock)
    assert len(await bus.dead_letters.list(limit=1)) == 1
    assert await bus.dead_letters.purge(group="other") == 0
    assert await bus.dead_letters.purge(group="billing") == 2
    assert await bus.dead_letters.list() == []


async def test_a_subscription_can_override_the_bus_retry_policy(
    seen: Seen, clock: RecordingClock
) -> None:
    router = Router()

    @router.subscribe(OrderPlaced, group="fast-fail", retry=Retry(tries=1, delays=()))
    async def once(event: OrderPlaced, ctx: Context) -> None:
        seen.calls.append((event.order_id, ctx.attempt))
        raise OSError("no retries here")

    async with EventBus("memory://", routers=[router], clock=clock) as bus:  # default policy
        await bus.publish(OrderPlaced(order_id="x"))
        await settle(bus, clock)
        assert seen.calls == [("x", 1)]
        [record] = await bus.dead_letters.list()
        assert record.reason == "retries exhausted after 1 deliveries"


async def test_without_middleware_permanent_failures_are_still_dead_lettered_at_once(
    router: Router, seen: Seen, clock: RecordingClock
) -> None:
    async with EventBus("memory://", routers=[router], clock=clock, middleware=()) as bus:
        await bus.publish(OrderPlaced(order_id="bad-1"))
        await bus.publish(OrderPlaced(order_id="model-1"))
        await settle(bus, clock)
        assert seen.calls == [("bad-1", 1), ("model-1", 1)]
        error_types = {r.error_type for r in await bus.dead_letters.list()}
    assert error_types == {
        "eventbus.errors.PermanentError",
        "pydantic_core._pydantic_core.ValidationError",
    }
