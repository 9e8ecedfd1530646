"""Retry: in-process tries with backoff on the fake clock, delayed redeliveries, classification."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import BaseModel, ValidationError

from eventbus import (
    Context,
    NonRetryableError,
    PermanentError,
    RetriesExhausted,
    RetryLater,
    TransientError,
)
from eventbus.errors import ConfigurationError
from eventbus.middleware import Retry, current_try
from tests.middleware.mwsupport import MakeContext, RecordingClock, drive

pytestmark = pytest.mark.anyio


class Flaky:
    """A fake ``call_next`` that fails with ``errors`` in turn, then succeeds; records each try."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.tries: list[tuple[int, int]] = []  # (ctx.attempt, current_try)

    async def __call__(self, ctx: Context) -> None:
        self.tries.append((ctx.attempt, current_try(ctx)))
        if self.errors:
            raise self.errors.pop(0)


async def test_transient_failures_are_retried_in_process_with_exponential_backoff(
    make_ctx: MakeContext, clock: RecordingClock
) -> None:
    retry = Retry(tries=4, backoff=0.5, max_backoff=1.5, jitter=0.0)
    handler = Flaky(ConnectionError("a"), TransientError("b"), OSError("c"))
    await drive(clock, retry(make_ctx(attempt=2), handler))
    assert clock.sleeps == [0.5, 1.0, 1.5]  # 0.5 * 2**n, capped at max_backoff
    assert handler.tries == [(2, 1), (2, 2), (2, 3), (2, 4)]  # ctx.attempt is untouched


async def test_jitter_adds_at_most_jitter_seconds(
    make_ctx: MakeContext, clock: RecordingClock
) -> None:
    retry = Retry(tries=3, backoff=1.0, max_backoff=100.0, jitter=0.25)
    await drive(clock, retry(make_ctx(), Flaky(OSError(), OSError())))
    assert 1.0 <= clock.sleeps[0] <= 1.25
    assert 2.0 <= clock.sleeps[1] <= 2.25


async def test_backoff_waits_on_the_clock_until_it_is_advanced(
    make_ctx: MakeContext, clock: RecordingClock
) -> None:
    retry = Retry(tries=2, backoff=5.0, jitter=0.0, max_backoff=5.0)
    handler = Flaky(OSError())
    task = asyncio.get_running_loop().create_task(retry(make_ctx(), handler))
    for _ in range(10):
        await asyncio.sleep(0)
    assert clock.sleepers == 1
    assert len(handler.tries) == 1
    await clock.advance(4.9)
    assert len(handler.tries) == 1
    await clock.advance(0.1)
    await task
    assert len(handler.tries) == 2


@pytest.mark.parametrize(("attempt", "delay"), [(1, 1.0), (2, 10.0), (3, 60.0)])
async def test_after_the_tries_the_delivery_is_handed_back_for_the_next_delay(
    make_ctx: MakeContext, attempt: int, delay: float
) -> None:
    retry = Retry(tries=1, delays=(1, 10, 60))
    error = OSError("smtp down")
    with pytest.raises(RetryLater) as caught:
        await retry(make_ctx(attempt=attempt), Flaky(error))
    assert caught.value.delay == delay
    assert caught.value.__cause__ is error
    assert "smtp down" in caught.value.reason


async def test_past_the_last_delay_it_gives_up_with_the_last_error_chained(
    make_ctx: MakeContext, clock: RecordingClock
) -> None:
    retry = Retry(tries=2, delays=(1, 10), clock=clock, jitter=0.0)
    last = OSError("still down")
    with pytest.raises(RetriesExhausted) as caught:
        await drive(clock, retry(make_ctx(attempt=3), Flaky(OSError("down"), last)))
    assert isinstance(caught.value, PermanentError)
    assert caught.value.last_error is last
    assert caught.value.__cause__ is last
    assert caught.value.attempts == 3
    assert retry.max_deliveries == 3


async def test_no_delays_means_give_up_after_the_first_delivery(make_ctx: MakeContext) -> None:
    with pytest.raises(RetriesExhausted):
        await Retry(tries=1, delays=())(make_ctx(), Flaky(OSError()))


class Model(BaseModel):
    n: int


def validation_error() -> ValidationError:
    try:
        Model.model_validate({"n": "not a number"})
    except ValidationError as exc:
        return exc
    raise AssertionError("unreachable")


async def test_permanent_errors_are_not_retried_and_pass_through(make_ctx: MakeContext) -> None:
    error = PermanentError("bad order")
    handler = Flaky(error)
    with pytest.raises(PermanentError) as caught:
        await Retry(tries=5)(make_ctx(), handler)
    assert caught.value is error
    assert len(handler.tries) == 1


async def test_validation_errors_are_not_retried_and_become_permanent(
    make_ctx: MakeContext,
) -> None:
    error = validation_error()
    handler = Flaky(error)
    with pytest.raises(NonRetryableError) as caught:
        await Retry(tries=5)(make_ctx(), handler)
    assert caught.value.error is error
    assert caught.value.__cause__ is error
    assert len(handler.tries) == 1


async def test_user_listed_exceptions_and_predicates_are_not_retried(
    make_ctx: MakeContext,
) -> None:
    by_type = Retry(tries=5, permanent=[KeyError])
    handler = Flaky(KeyError("sku"))
    with pytest.raises(NonRetryableError):
        await by_type(make_ctx(), handler)
    assert len(handler.tries) == 1

    by_predicate = Retry(tries=5, is_permanent=lambda exc: "forbidden" in str(exc))
    handler = Flaky(RuntimeError("403 forbidden"))
    with pytest.raises(NonRetryableError):
        await by_predicate(make_ctx(), handler)
    assert len(handler.tries) == 1


async def test_transient_error_is_retried_even_when_a_predicate_matches(
    make_ctx: MakeContext, clock: RecordingClock
) -> None:
    retry = Retry(tries=2, is_permanent=lambda exc: True, jitter=0.0)
    handler = Flaky(TransientError("try again"))
    await drive(clock, retry(make_ctx(), handler))
    assert len(handler.tries) == 2


async def test_retry_later_from_the_handler_passes_through_unchanged(
    make_ctx: MakeContext,
) -> None:
    asked = RetryLater(42, "waiting for the warehouse")
    handler = Flaky(asked)
    with pytest.raises(RetryLater) as caught:
        await Retry(tries=5, delays=())(make_ctx(attempt=9), handler)
    assert caught.value is asked
    assert len(handler.tries) == 1


async def test_cancellation_is_not_retried(make_ctx: MakeContext) -> None:
    handler = Flaky(asyncio.CancelledError())
    with pytest.raises(asyncio.CancelledError):
        await Retry(tries=5)(make_ctx(), handler)
    assert len(handler.tries) == 1


def test_bad_options_fail_at_configuration_time() -> None:
    with pytest.raises(ConfigurationError):
        Retry(tries=0)
    with pytest.raises(ConfigurationError):
        Retry(delays=(-1,))


def test_router_rejects_a_retry_option_that_is_not_a_retry_policy() -> None:
    from eventbus import Router

    with pytest.raises(ConfigurationError, match="Retry"):
        Router().subscribe("OrderPlaced", retry=3)  # type: ignore[arg-type]


def test_current_try_is_one_outside_retry(make_ctx: MakeContext) -> None:
    assert current_try(make_ctx()) == 1
