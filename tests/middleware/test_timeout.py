"""Timeout: an overrunning handler is cancelled (in its own task) and retried as transient."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from eventbus import Context, HandlerTimeout, TransientError
from eventbus.errors import ConfigurationError
from eventbus.middleware import Retry, Timeout
from tests.middleware.mwsupport import MakeContext, RecordingClock, drive

pytestmark = pytest.mark.anyio

marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="unset")


async def test_a_handler_that_overruns_is_cancelled_and_reported_as_transient(
    make_ctx: MakeContext, clock: RecordingClock
) -> None:
    cancelled: list[bool] = []

    async def slow(ctx: Context) -> None:
        try:
            await clock.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    task = asyncio.get_running_loop().create_task(Timeout(5)(make_ctx(), slow))
    for _ in range(10):
        await asyncio.sleep(0)
    await clock.advance(5)
    with pytest.raises(HandlerTimeout, match="longer than 5s") as caught:
        await task
    assert isinstance(caught.value, TransientError)
    assert cancelled == [True]


async def test_a_handler_in_time_is_untouched_and_runs_in_the_same_task(
    make_ctx: MakeContext, clock: RecordingClock
) -> None:
    outer = asyncio.current_task()
    seen: list[object] = []

    async def quick(ctx: Context) -> None:
        seen.append(asyncio.current_task())
        seen.append(marker.get())

    marker.set("from the caller")
    await Timeout(5)(make_ctx(), quick)
    assert seen == [outer, "from the caller"]
    assert clock.sleepers == 0  # the watchdog is gone


async def test_retry_retries_a_timed_out_try(make_ctx: MakeContext, clock: RecordingClock) -> None:
    runs: list[int] = []

    async def slow_then_fast(ctx: Context) -> None:
        runs.append(1)
        if len(runs) == 1:
            await clock.sleep(60)

    async def chain(ctx: Context) -> None:
        await Timeout(5)(ctx, slow_then_fast)

    await drive(clock, Retry(tries=2, jitter=0.0)(make_ctx(), chain), step=5)
    assert len(runs) == 2


async def test_an_error_inside_the_timeout_propagates_unchanged(make_ctx: MakeContext) -> None:
    async def broken(ctx: Context) -> None:
        raise KeyError("x")

    with pytest.raises(KeyError):
        await Timeout(5)(make_ctx(), broken)


def test_timeout_must_be_positive() -> None:
    with pytest.raises(ConfigurationError):
        Timeout(0)
