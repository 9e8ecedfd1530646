"""Idempotency middleware semantics, with the in-memory store and a fake clock."""

from __future__ import annotations

import asyncio

import pytest

from eventbus import Context, RetryLater
from eventbus.errors import ConfigurationError
from eventbus.middleware import ClaimStatus, Idempotency, MemoryIdempotencyStore
from eventbus.middleware.idempotency import DUPLICATE_STATE_KEY, Claim
from tests.middleware.mwsupport import MakeContext, RecordingClock

pytestmark = pytest.mark.anyio


class Handler:
    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.runs = 0

    async def __call__(self, ctx: Context) -> None:
        self.runs += 1
        if self.errors:
            raise self.errors.pop(0)


@pytest.fixture
def store(clock: RecordingClock) -> MemoryIdempotencyStore:
    return MemoryIdempotencyStore(clock=clock)


async def test_a_duplicate_is_acked_without_running_the_handler(
    make_ctx: MakeContext, store: MemoryIdempotencyStore
) -> None:
    middleware, handler = Idempotency(store), Handler()
    await middleware(make_ctx(), handler)
    duplicate = make_ctx()
    await middleware(duplicate, handler)
    assert handler.runs == 1
    assert duplicate.state[DUPLICATE_STATE_KEY] is True


async def test_the_key_is_the_group_and_the_event_id(
    make_ctx: MakeContext, store: MemoryIdempotencyStore
) -> None:
    middleware, handler = Idempotency(store), Handler()
    await middleware(make_ctx(event_id="a"), handler)
    await middleware(make_ctx(event_id="b"), handler)
    assert handler.runs == 2
    claim = await store.claim("other-group", "a", owner="x", lease=10)
    assert claim.status is ClaimStatus.ACQUIRED


async def test_a_failed_attempt_releases_its_claim_so_the_retry_runs(
    make_ctx: MakeContext, store: MemoryIdempotencyStore
) -> None:
    middleware, handler = Idempotency(store), Handler(OSError("first try fails"))
    with pytest.raises(OSError, match="first try fails"):
        await middleware(make_ctx(), handler)
    assert len(store) == 0  # not marked: a failure must never make the retry be skipped
    await middleware(make_ctx(attempt=2), handler)
    assert handler.runs == 2
    await middleware(make_ctx(attempt=3), handler)
    assert handler.runs == 2


async def test_cancellation_releases_the_claim_too(
    make_ctx: MakeContext, store: MemoryIdempotencyStore
) -> None:
    with pytest.raises(asyncio.CancelledError):
        await Idempotency(store)(make_ctx(), Handler(asyncio.CancelledError()))
    assert len(store) == 0


async def test_a_live_lease_elsewhere_means_redeliver_after_it_not_drop(
    make_ctx: MakeContext, store: MemoryIdempotencyStore, clock: RecordingClock
) -> None:
    await store.claim("billing", "e-1", owner="another-consumer", lease=30)
    await clock.advance(10)
    handler = Handler()
    with pytest.raises(RetryLater) as caught:
        await Idempotency(store)(make_ctx(), handler)
    assert caught.value.delay == pytest.approx(20)
    assert handler.runs == 0
    await clock.advance(20)  # the other consumer died: its lease runs out
    await Idempotency(store)(make_ctx(attempt=2), handler)
    assert handler.runs == 1


async def test_done_keys_are_forgotten_after_the_retention(
    make_ctx: MakeContext, store: MemoryIdempotencyStore, clock: RecordingClock
) -> None:
    middleware, handler = Idempotency(store, retention=3600), Handler()
    await middleware(make_ctx(), handler)
    await clock.advance(3599)
    await middleware(make_ctx(), handler)
    assert handler.runs == 1
    await clock.advance(1)
    await middleware(make_ctx(), handler)
    assert handler.runs == 2


class BrokenStore(MemoryIdempotencyStore):
    async def complete(
        self,
        group: str,
        event_id: str,
        *,
        owner: str,
        retention: float,
        result: bytes | None = None,
    ) -> None:
        raise ConnectionError("store went away")

    async def release(self, group: str, event_id: str, *, owner: str) -> None:
        raise ConnectionError("store went away")


async def test_store_failures_after_the_handler_are_logged_not_raised(
    make_ctx: MakeContext, clock: RecordingClock, caplog: pytest.LogCaptureFixture
) -> None:
    middleware = Idempotency(BrokenStore(clock=clock))
    await middleware(make_ctx(event_id="ok"), Handler())  # the effect happened: ack
    with pytest.raises(ValueError, match="handler error"):  # the handler's error wins
        await middleware(make_ctx(event_id="bad"), Handler(ValueError("handler error")))
    assert "could not mark it done" in caplog.text
    assert "could not release the claim" in caplog.text


async def test_memory_store_sweeps_expired_entries(clock: RecordingClock) -> None:
    store = MemoryIdempotencyStore(clock=clock, sweep_every=10)
    for n in range(5):
        await store.complete("g", str(n), owner="o", retention=1)
    await clock.advance(2)
    for n in range(5):
        assert (await store.claim("g", f"new-{n}", owner="o", lease=100)) == Claim(
            ClaimStatus.ACQUIRED
        )
    assert len(store) == 5


def test_lease_and_retention_must_be_positive(store: MemoryIdempotencyStore) -> None:
    with pytest.raises(ConfigurationError):
        Idempotency(store, lease=0)
