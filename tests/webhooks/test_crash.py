"""A sender killed with SIGKILL loses nothing: killed between attempts, the next sender makes
the retries when they are due; killed during an attempt, the next one makes it again once the
lease has run out. Either way each webhook reaches the receiver with its one ``webhook-id``,
and the only repeat is the attempt whose answer the dead process never recorded."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from eventbus.clock import FakeClock
from eventbus.testing import wait_until
from eventbus.webhooks import WebhookSender, WebhookStore
from tests.webhooks.conftest import HANG, LOOPBACK, Receiver
from tests.webhooks.support import event
from tests.webhooks.victim import SCHEDULE

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).parent.parent.parent
EVENTS = 5
Spawn = Callable[[float, float], "subprocess.Popen[str]"]


@pytest.fixture
def spawn(engine: AsyncEngine, store: WebhookStore) -> Iterator[Spawn]:
    started: list[subprocess.Popen[str]] = []

    def run(timeout: float, lease: float) -> subprocess.Popen[str]:
        url = engine.url.render_as_string(hide_password=False)
        path = os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])
        arguments = [url, prefix_of(store), str(timeout), str(lease)]
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.webhooks.victim", *arguments],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": path},
            stdout=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        return process

    yield run
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()


async def attempts_of(store: WebhookStore) -> list[int]:
    t = store.tables.deliveries
    async with store.engine.connect() as connection:
        return [row.attempts for row in await connection.execute(sa.select(t.c.attempts))]


def prefix_of(store: WebhookStore) -> str:
    return store.tables.endpoints.name.removesuffix("_endpoints")


def real_time(store: WebhookStore) -> WebhookStore:
    """The same tables on the wall clock, as the victim process sees them."""
    return WebhookStore(store.engine, prefix=prefix_of(store))


def resumed(store: WebhookStore, clock: FakeClock) -> WebhookSender:
    """The next sender, on the same tables, with time under the test's control."""
    later = WebhookStore(store.engine, prefix=prefix_of(store), now=clock.now)
    return WebhookSender(later, guard=LOOPBACK, schedule=SCHEDULE)


async def test_a_sender_killed_between_attempts_resumes_with_nothing_lost(
    store: WebhookStore, receiver: Receiver, spawn: Spawn
) -> None:
    store = real_time(store)
    await store.endpoints.add("acme", receiver.script("/a", *[500] * EVENTS, 200), ["#"])
    sent = [await _take(store) for _ in range(EVENTS)]
    victim = spawn(15, 60)

    async def each_tried_once() -> bool:
        return await attempts_of(store) == [1] * EVENTS

    await wait_until(lambda: len(receiver.to("/a")) == EVENTS, timeout=30)
    await wait_until(each_tried_once, timeout=10)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    clock = FakeClock(start=time.time())
    sender = resumed(store, clock)
    assert await sender.run_once() == 0, "the retries are not due yet"
    await clock.advance(30)
    assert await sender.run_once() == EVENTS
    await sender.stop()
    ids = [r.headers["webhook-id"] for r in receiver.to("/a")]
    assert sorted(ids) == sorted([*sent, *sent])
    assert await attempts_of(store) == [2] * EVENTS
    states = {d.state for d in await store.deliveries.list()}
    assert states == {"delivered"}


async def test_a_sender_killed_during_an_attempt_makes_it_again_after_the_lease(
    store: WebhookStore, receiver: Receiver, spawn: Spawn
) -> None:
    store = real_time(store)
    await store.endpoints.add("acme", receiver.script("/h", HANG, 200), ["#"])
    sent = await _take(store)
    victim = spawn(30, 40)
    await wait_until(lambda: len(receiver.to("/h")) == 1, timeout=30)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    clock = FakeClock(start=time.time())
    sender = resumed(store, clock)
    assert await sender.run_once() == 0, "the dead sender's lease still holds the row"
    await clock.advance(40)
    assert await sender.run_once() == 1
    await sender.stop()
    assert [r.headers["webhook-id"] for r in receiver.to("/h")] == [sent, sent]
    [delivery] = await store.deliveries.list()
    assert (delivery.state, delivery.attempts) == ("delivered", 1)


async def _take(store: WebhookStore) -> str:
    sent = event()
    await store.take(sent)
    return sent.id
