"""The ``memory_bus`` fixture on its fake clock: retries run to their end inside ``drain()``;
strict mode checks what the test publishes, not the follow-ups handlers publish."""

from __future__ import annotations

import pytest

from eventbus import Context, Event, EventBus, Router
from eventbus.clock import FakeClock
from eventbus.testing import published

pytestmark = pytest.mark.anyio


class Flaky(Event):
    failures: int  # how many runs fail before one succeeds


class Signup(Event):
    user_id: str


class Unhandled(Event):
    user_id: str


runs: list[tuple[int, int]] = []
router = Router()


@router.subscribe(Flaky, group="flaky")
async def flaky(event: Flaky, ctx: Context) -> None:
    runs.append((event.failures, ctx.attempt))
    if sum(1 for failures, _ in runs if failures == event.failures) <= event.failures:
        raise RuntimeError("not yet")


@router.subscribe(Signup, group="signup")
async def signup(event: Signup, ctx: Context) -> None:
    runs.append((-1, ctx.attempt))
    await ctx.publish(Unhandled(user_id=event.user_id))  # nobody subscribes to it


@pytest.fixture
def eventbus_routers() -> list[Router]:
    runs.clear()
    return [router]


@pytest.mark.parametrize(
    ("failures", "deliveries"),
    [(1, 1), (3, 2), (12, 5)],  # a quick retry; a delayed redelivery; the dead-letter queue
)
async def test_drain_moves_the_fake_clock_through_backoff_and_delays(
    memory_bus: EventBus, fake_clock: FakeClock, failures: int, deliveries: int
) -> None:
    await memory_bus.publish(Flaky(failures=failures))
    await memory_bus.drain()
    assert max(attempt for _, attempt in runs) == min(deliveries, 4)
    dead = await memory_bus.dead_letters.list(group="flaky")
    assert len(dead) == (1 if failures >= 12 else 0)
    assert fake_clock.now() > 0


async def test_frozen_time_is_named_in_the_drain_timeout(memory_bus: EventBus) -> None:
    await memory_bus.publish(Flaky(failures=1))
    with pytest.raises(TimeoutError, match=r"FakeClock.*time is frozen.*clock\.advance"):
        await memory_bus.drain(timeout=0.1, advance_clock=False)
    await memory_bus.drain()  # lets the retry finish, so stopping the bus need not wait for it
    assert [attempt for _, attempt in runs] == [1, 1]


async def test_strict_mode_records_a_follow_up_nobody_handles(memory_bus: EventBus) -> None:
    await memory_bus.publish(Signup(user_id="u1"))
    await memory_bus.drain()
    assert runs == [(-1, 1)]  # handled once: the follow-up did not fail the handler
    assert [e.json() for e in published(memory_bus, Unhandled)] == [{"user_id": "u1"}]
