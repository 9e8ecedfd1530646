"""Failure log records: one per failure, each carrying the documented ``extra`` fields."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from eventbus import Context, Envelope, Event, EventBus, PermanentError, Router
from eventbus.brokers.memory import MemoryBroker
from eventbus.clock import FakeClock
from eventbus.consume import SETTLE_RETRY_PAUSES
from eventbus.logfields import (
    ATTEMPT,
    CORRELATION_ID,
    DESTINATION,
    EVENT_ID,
    EVENT_TYPE,
    FIELDS,
    GROUP,
    OUTCOME,
    SUBSCRIPTION,
)
from eventbus.middleware import Retry
from tests.test_consume_policy import FlakyBroker

pytestmark = pytest.mark.anyio


class Job(Event):
    n: int


def failure_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The records that carry the failure fields, in the order they were logged."""
    return [r for r in caplog.records if hasattr(r, OUTCOME)]


def fields(record: logging.LogRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in FIELDS}


def expected(envelope: Envelope, sub: str, outcome: str, attempt: int) -> dict[str, Any]:
    return {
        EVENT_ID: envelope.id,
        EVENT_TYPE: "Job",
        CORRELATION_ID: envelope.correlationid,
        ATTEMPT: attempt,
        SUBSCRIPTION: sub,
        GROUP: "g",
        DESTINATION: "Job",
        OUTCOME: outcome,
    }


async def test_every_failed_try_is_one_record_with_the_event_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, router, failures = FakeClock(), Router(), list[int]()

    @router.subscribe(Job, group="g", retry=Retry(tries=2, backoff=1, jitter=0, delays=(5,)))
    async def always_fails(event: Job, ctx: Context) -> None:
        failures.append(ctx.attempt)
        raise RuntimeError("down")

    [sub] = router.subscriptions
    with caplog.at_level(logging.DEBUG, logger="eventbus"):
        async with EventBus("memory://", routers=[router], clock=clock) as bus:
            envelope = await bus.publish(Job(n=1), correlation_id="request-7")
            await bus.drain()
    assert failures == [1, 1, 2, 2]
    records = failure_records(caplog)
    assert [fields(r) for r in records] == [
        expected(envelope, sub.name, "retrying", 1),
        expected(envelope, sub.name, "redelivering", 1),
        expected(envelope, sub.name, "retrying", 2),
        expected(envelope, sub.name, "dead-lettered", 2),
    ]
    assert records[-1].levelno == logging.ERROR
    assert envelope.correlationid == "request-7"


async def test_a_failure_no_middleware_decided_about_is_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, router, runs = FakeClock(), Router(), list[int]()

    @router.subscribe(Job, group="g")
    async def fails_once(event: Job, ctx: Context) -> None:
        runs.append(ctx.attempt)
        if ctx.attempt == 1:
            raise RuntimeError("once")

    [sub] = router.subscriptions
    with caplog.at_level(logging.DEBUG, logger="eventbus"):
        async with EventBus("memory://", routers=[router], middleware=(), clock=clock) as bus:
            envelope = await bus.publish(Job(n=1))
            await bus.drain()
    assert runs == [1, 2]
    [record] = failure_records(caplog)
    assert fields(record) == expected(envelope, sub.name, "redelivering", 1)
    assert record.levelno == logging.WARNING
    assert record.exc_info is not None  # the handler's traceback goes with it


async def test_undecodable_bytes_are_logged_without_event_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    router = Router()
    router.subscribe(Job, group="g")(_ignore)
    [sub] = router.subscriptions
    broker = MemoryBroker()
    with caplog.at_level(logging.DEBUG, logger="eventbus"):
        async with EventBus(broker, routers=[router]) as bus:
            await broker.send_raw("Job", b"\xff not an event")
            await bus.drain()
    [record] = failure_records(caplog)
    assert fields(record) == {
        EVENT_ID: None,
        EVENT_TYPE: None,
        CORRELATION_ID: None,
        ATTEMPT: 1,
        SUBSCRIPTION: sub.name,
        GROUP: "g",
        DESTINATION: "Job",
        OUTCOME: "dead-lettered",
    }


async def test_settle_failures_carry_the_fields_too(caplog: pytest.LogCaptureFixture) -> None:
    router = Router()
    router.subscribe(Job, group="g")(_refuse)
    [sub] = router.subscriptions
    tries = 1 + len(SETTLE_RETRY_PAUSES)
    broker = FlakyBroker({"dead_letter": tries}, clock=FakeClock())  # the first round fails
    with caplog.at_level(logging.DEBUG, logger="eventbus"):
        async with EventBus(broker, routers=[router]) as bus:
            envelope = await bus.publish(Job(n=1))
            await bus.drain()
    outcomes = [r.__dict__[OUTCOME] for r in failure_records(caplog)]
    assert outcomes == [
        "dead-lettered",
        *["settle-retrying"] * len(SETTLE_RETRY_PAUSES),
        "released",
        "dead-lettered",  # handed back uncounted, handled again, dead-lettered for good
    ]
    for record in failure_records(caplog):
        assert fields(record) == expected(envelope, sub.name, record.__dict__[OUTCOME], 1)


def test_the_field_names_cannot_collide_with_log_record_attributes() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    assert not set(FIELDS) & set(vars(record))
    assert all(name.startswith("eventbus_") for name in FIELDS)


async def _ignore(event: Job) -> None:
    return None


async def _refuse(event: Job) -> None:
    raise PermanentError("no")
