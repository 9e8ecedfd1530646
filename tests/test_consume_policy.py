"""The consume policy whatever the middleware: retry= always applies, nothing loops hot."""

from __future__ import annotations

import functools
import logging
from typing import Any

import pytest

from eventbus import (
    BrokerUnavailable,
    ConfigurationError,
    Context,
    Event,
    EventBus,
    PermanentError,
    RetryLater,
    Router,
)
from eventbus.brokers.memory import MemoryBroker
from eventbus.clock import FakeClock
from eventbus.consume import SETTLE_RETRY_PAUSES
from eventbus.middleware import Retry, current_try
from eventbus.testing import wait_until

pytestmark = pytest.mark.anyio


class Job(Event):
    n: int


def failing(attempts: list[int]) -> Any:
    async def handle(event: Job, ctx: Context) -> None:
        attempts.append(ctx.attempt)
        raise RuntimeError("down")

    return handle


class Mark:
    """A middleware that is not a Retry, so the chain has none."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, ctx: Context, call_next: Any) -> None:
        self.calls += 1
        await call_next(ctx)


@pytest.mark.parametrize("middleware", [(), "mark"])
async def test_subscription_retry_applies_without_a_retry_in_the_bus_chain(
    middleware: Any,
) -> None:
    chain = (Mark(),) if middleware == "mark" else ()
    clock, router, attempts = FakeClock(), Router(), list[int]()
    retry = Retry(tries=2, backoff=1, jitter=0, delays=(5,))
    router.subscribe(Job, group="g", retry=retry)(failing(attempts))
    async with EventBus("memory://", routers=[router], middleware=chain, clock=clock) as bus:
        await bus.publish(Job(n=1))
        await wait_until(lambda: attempts == [1])
        await wait_until(lambda: clock.sleepers == 1)  # the in-process backoff of try 2
        await clock.advance(1)
        await wait_until(lambda: attempts == [1, 1])
        await wait_until(lambda: clock.sleepers == 1)  # the delayed redelivery
        await clock.advance(5)
        await wait_until(lambda: attempts == [1, 1, 2] and clock.sleepers == 1)
        await clock.advance(1)
        await wait_until(lambda: attempts == [1, 1, 2, 2])
        await bus.drain(advance_clock=False)
        [record] = await bus.dead_letters.list(group="g")
    assert record.reason == "retries exhausted after 2 deliveries"


async def test_subscription_retry_replaces_the_bus_retry() -> None:
    clock, router, attempts = FakeClock(), Router(), list[int]()
    router.subscribe(Job, group="g", retry=Retry(tries=1, delays=()))(failing(attempts))
    async with EventBus("memory://", routers=[router], clock=clock) as bus:  # default chain
        await bus.publish(Job(n=1))
        await bus.drain(advance_clock=False)  # no backoff, no delay: dead at once
        assert len(await bus.dead_letters.list(group="g")) == 1
    assert attempts == [1]


async def test_with_no_middleware_a_failure_is_redelivered_after_a_growing_delay(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, router, attempts = FakeClock(), Router(), list[int]()
    router.subscribe(Job, group="g")(failing(attempts))
    bus = EventBus("memory://", routers=[router], middleware=(), clock=clock)
    async with bus:
        await bus.publish(Job(n=1))
        for attempt, delay in [(1, 1.0), (2, 2.0), (3, 4.0)]:
            await wait_until(functools.partial(_has_runs, attempts, attempt))
            await wait_until(lambda: clock.sleepers == 1)
            await clock.advance(delay - 0.01)
            assert len(attempts) == attempt, "redelivered before its delay"
            await clock.advance(0.01)
        await wait_until(lambda: attempts == [1, 2, 3, 4])
    assert "redelivering in 1s" in caplog.text
    assert "redelivering in 4s" in caplog.text


async def test_the_bare_redelivery_delay_is_capped_at_a_minute() -> None:
    clock, router, attempts = FakeClock(), Router(), list[int]()

    @router.subscribe(Job, group="g")
    async def handle(event: Job, ctx: Context) -> None:
        attempts.append(ctx.attempt)
        raise RuntimeError("down")

    bus = EventBus("memory://", routers=[router], middleware=(), clock=clock, redelivery_delay=30)
    with pytest.raises(ConfigurationError, match="hot loop"):
        EventBus("memory://", redelivery_delay=0)
    async with bus:
        await bus.publish(Job(n=1))
        for expected, delay in [(1, 30), (2, 60), (3, 60)]:
            await wait_until(functools.partial(_has_runs, attempts, expected))
            await wait_until(lambda: clock.sleepers == 1)
            await clock.advance(delay - 0.01)
            assert len(attempts) == expected
            await clock.advance(0.01)
        await wait_until(lambda: len(attempts) == 4)


async def test_a_failure_is_logged_once_per_delivery(caplog: pytest.LogCaptureFixture) -> None:
    clock, router, attempts = FakeClock(), Router(), list[int]()
    router.subscribe(Job, group="g")(failing(attempts))
    async with EventBus("memory://", routers=[router], middleware=(), clock=clock) as bus:
        with caplog.at_level(logging.WARNING, logger="eventbus"):
            await bus.publish(Job(n=1))
            await wait_until(lambda: clock.sleepers == 1)
    assert attempts == [1]
    assert sum("failed on" in r.getMessage() for r in caplog.records) == 1


def _has_runs(attempts: list[int], count: int) -> bool:
    return len(attempts) == count


class FlakyBroker(MemoryBroker):
    """The memory broker, with settles that fail as often as ``failures`` says."""

    def __init__(self, failures: dict[str, int], **options: Any) -> None:
        super().__init__(**options)
        self.failures = failures

    async def subscribe(self, subscription: Any) -> Any:
        return _FlakyConsumer(await super().subscribe(subscription), self.failures)


class _FlakyConsumer:
    def __init__(self, inner: Any, failures: dict[str, int]) -> None:
        self.inner, self.failures = inner, failures

    def __aiter__(self) -> Any:
        return self._deliveries()

    async def _deliveries(self) -> Any:
        async for delivery in self.inner:
            yield _FlakyDelivery(delivery, self.failures)

    async def close(self) -> None:
        await self.inner.close()


class _FlakyDelivery:
    def __init__(self, inner: Any, failures: dict[str, int]) -> None:
        self._inner, self._failures = inner, failures

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _fail(self, operation: str) -> None:
        if self._failures.get(operation):
            self._failures[operation] -= 1
            raise BrokerUnavailable(f"{operation} failed")

    async def ack(self) -> None:
        self._fail("ack")
        await self._inner.ack()

    async def dead_letter(self, record: Any) -> None:
        self._fail("dead_letter")
        await self._inner.dead_letter(record)


async def test_a_failed_ack_is_tried_again(caplog: pytest.LogCaptureFixture) -> None:
    clock, router, runs = FakeClock(), Router(), list[int]()

    @router.subscribe(Job, group="g")
    async def handle(event: Job, ctx: Context) -> None:
        runs.append(ctx.attempt)

    broker = FlakyBroker({"ack": 2}, clock=clock)
    async with EventBus(broker, routers=[router]) as bus:
        await bus.publish(Job(n=1))
        await bus.drain()
    assert runs == [1]  # settled on the third try, not handled again
    assert caplog.text.count("could not settle") == 2
    assert broker.pending() == {"queued": 0, "unsettled": 0, "delayed": 0}


async def test_a_settle_that_keeps_failing_hands_the_delivery_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, router, runs = FakeClock(), Router(), list[int]()

    @router.subscribe(Job, group="g")
    async def refuse(event: Job, ctx: Context) -> None:
        runs.append(ctx.attempt)
        raise PermanentError("no")

    tries = 1 + len(SETTLE_RETRY_PAUSES)
    broker = FlakyBroker({"dead_letter": tries}, clock=clock)  # every try of the first round
    async with EventBus(broker, routers=[router]) as bus:
        await bus.publish(Job(n=1))
        await bus.drain()
        [record] = await bus.dead_letters.list(group="g")
    assert runs == [1, 1]  # given back uncounted, then handled again and dead-lettered
    assert record.attempts == 1
    assert "handing it back for redelivery" in caplog.text


async def test_an_unexpected_error_in_the_policy_loses_nothing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from eventbus.consume import describe_failure as real

    calls = {"n": 0}

    def broken_once(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("a bug while describing the failure")
        return real(*args, **kwargs)

    monkeypatch.setattr("eventbus.consume.describe_failure", broken_once)
    clock, router = FakeClock(), Router()
    router.subscribe(Job, group="g")(_refuse)
    async with EventBus("memory://", routers=[router], clock=clock) as bus:
        await bus.publish(Job(n=1))
        await bus.drain()
        assert len(await bus.dead_letters.list(group="g")) == 1
    assert "handling a delivery failed unexpectedly" in caplog.text


async def _refuse(event: Job) -> None:
    raise PermanentError("no")


# The bus runs a chain whose outermost link is a Retry without that link's coroutine (its first
# try in the consume policy's own); these check that a Retry behaves the same wherever it is.
RETRY_PLACES = ["retry outermost", "retry behind a middleware", "retry before a middleware"]


def _chain(place: str, retry: Retry) -> tuple[list[Any], Mark, Mark]:
    """The bus chain for ``place``, with the middleware outside and inside the retry."""
    outer, inner = Mark(), Mark()
    if place == "retry outermost":
        return [retry], outer, inner
    if place == "retry behind a middleware":
        return [outer, retry], outer, inner
    return [retry, inner], outer, inner


@pytest.mark.parametrize("place", RETRY_PLACES)
async def test_a_transient_failure_is_retried_in_process_wherever_the_retry_is(
    place: str,
) -> None:
    clock, router, tries = FakeClock(), Router(), list[int]()
    chain, outer, inner = _chain(place, Retry(tries=3, backoff=1, jitter=0, delays=(5,)))

    @router.subscribe(Job, group="g")
    async def handle(event: Job, ctx: Context) -> None:
        tries.append(current_try(ctx))
        if len(tries) < 3:
            raise RuntimeError("down for now")

    async with EventBus("memory://", routers=[router], middleware=chain, clock=clock) as bus:
        await bus.publish(Job(n=1))
        await bus.drain()  # advances the fake clock through the two backoffs
        assert await bus.dead_letters.list(group="g") == []
        assert bus.broker.pending() == {"queued": 0, "unsettled": 0, "delayed": 0}
    assert tries == [1, 2, 3]
    # A middleware outside the retry sees the delivery once, one inside it sees every try.
    expected = {"retry outermost": (0, 0), "retry behind a middleware": (1, 0)}
    assert (outer.calls, inner.calls) == expected.get(place, (0, 3))


@pytest.mark.parametrize("place", RETRY_PLACES)
async def test_a_permanent_error_and_retry_later_pass_the_retry_wherever_it_is(
    place: str,
) -> None:
    clock, router, seen = FakeClock(), Router(), list[tuple[int, int]]()
    chain, _, _ = _chain(place, Retry(tries=3, backoff=1, jitter=0, delays=(5,)))

    @router.subscribe(Job, group="g")
    async def handle(event: Job, ctx: Context) -> None:
        seen.append((event.n, ctx.attempt))
        if event.n == 1:
            raise PermanentError("never")
        if ctx.attempt == 1:
            raise RetryLater(30)

    async with EventBus("memory://", routers=[router], middleware=chain, clock=clock) as bus:
        await bus.publish(Job(n=1))
        await bus.publish(Job(n=2))
        await bus.drain()
        [record] = await bus.dead_letters.list(group="g")
    assert record.reason == "permanent failure"
    assert sorted(seen) == [(1, 1), (2, 1), (2, 2)]  # no in-process try for either


@pytest.mark.parametrize("place", RETRY_PLACES)
async def test_a_delivery_whose_tries_all_fail_is_redelivered_then_dead_wherever_the_retry_is(
    place: str,
) -> None:
    clock, router, attempts = FakeClock(), Router(), list[int]()
    chain, _, _ = _chain(place, Retry(tries=2, backoff=1, jitter=0, delays=(5,)))
    router.subscribe(Job, group="g")(failing(attempts))
    async with EventBus("memory://", routers=[router], middleware=chain, clock=clock) as bus:
        await bus.publish(Job(n=1))
        await bus.drain()
        [record] = await bus.dead_letters.list(group="g")
    assert attempts == [1, 1, 2, 2]
    assert record.reason == "retries exhausted after 2 deliveries"
    assert record.error_message == "down"
