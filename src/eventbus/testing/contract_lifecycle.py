"""The lifecycle part of the conformance suite: shutdown, hand-back, limits, connections."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from eventbus.context import Context
from eventbus.envelope import Envelope
from eventbus.errors import PublishError
from eventbus.router import Router
from eventbus.testing._contract_base import ContractBase, Ping, collect

__all__ = ["LifecycleContract"]

_LARGEST_SENT = 16 * 1024 * 1024
"""Payloads at the adapter's limit are sent up to this size (RabbitMQ's 128 MiB is not)."""


class LifecycleContract(ContractBase):
    """Stopping, handing back, the payload limit, connecting: every adapter alike."""

    async def test_unfinished_event_is_redelivered_after_shutdown(self) -> None:
        event_cls, router = self.event(), Router()
        starts: list[int] = []
        hang = {"on": True}

        @router.subscribe(event_cls, group=f"{self.ns}-stuck")
        async def stuck(event: Ping, ctx: Context) -> None:
            starts.append(ctx.attempt)
            if hang["on"]:
                await asyncio.Event().wait()

        bus_cm = self.bus(router)
        bus = await bus_cm.__aenter__()
        try:
            await bus.publish(event_cls(n=1))
            await self.wait(lambda: len(starts) == 1, "the handler starts")
        finally:
            bus.shutdown_timeout = 0.05
            await bus_cm.__aexit__(None, None, None)
        hang["on"] = False
        async with self.bus(router):
            await self.wait(lambda: len(starts) == 2, "the event is delivered again")
        assert starts[1] >= 2

    async def test_shutdown_lets_running_handlers_finish(self) -> None:
        event_cls, router = self.event(), Router()
        done: list[int] = []
        started, release = asyncio.Event(), asyncio.Event()

        @router.subscribe(event_cls, group=f"{self.ns}-finish")
        async def slow(event: Ping) -> None:
            started.set()
            await release.wait()
            done.append(event.n)

        async with self.bus(router) as bus:
            await bus.publish(event_cls(n=1))
            await asyncio.wait_for(started.wait(), self.timeout)
            stopping = asyncio.ensure_future(bus.stop())
            await asyncio.sleep(0)
            release.set()
            await asyncio.wait_for(stopping, self.timeout)
        assert done == [1]
        async with self.bus(router) as bus:  # acked: a new consumer does not see it again
            await bus.publish(event_cls(n=2))
            await self.wait(lambda: done == [1, 2], "only the new event is handled")

    async def test_large_payload_round_trips(self) -> None:
        event_cls, router = self.event(), Router()
        got: list[Any] = []
        router.subscribe(event_cls)(collect(got))
        text = "ünïcødé ✓ " * 25_000
        async with self.bus(router) as bus:
            await bus.publish(event_cls(n=1, text=text))
            await self.wait(lambda: len(got) == 1, "the large event is handled")
        assert got[0].text == text

    async def test_connect_and_close_are_idempotent(self) -> None:
        broker = await self.make_broker()
        await broker.connect()
        await broker.connect()
        await broker.close()
        await broker.close()

    async def test_stop_starts_nothing_new_and_hands_back_what_was_taken(self) -> None:
        event_cls, router = self.event(), Router()
        started: list[tuple[int, int]] = []
        finish = asyncio.Event()

        @router.subscribe(event_cls, group=f"{self.ns}-release", concurrency=2)
        async def work(event: Ping, ctx: Context) -> None:
            started.append((event.n, ctx.attempt))
            await finish.wait()

        bus_cm = self.bus(router)
        bus = await bus_cm.__aenter__()
        try:
            for n in range(6):
                await bus.publish(event_cls(n=n), key=f"k{n}")
            await self.wait(lambda: len(started) == 2, "two handlers run")
            running = list(started)
            stopping = asyncio.ensure_future(bus_cm.__aexit__(None, None, None))
            await asyncio.sleep(0)  # stop() has begun: the running handlers may now finish
            finish.set()
            await asyncio.wait_for(stopping, self.timeout)
        finally:
            finish.set()
        assert started == running, "a handler started after stop() was called"
        async with self.bus(router):
            await self.wait(lambda: len({n for n, _ in started}) == 6, "the rest are handled")
        late = [(n, attempt) for n, attempt in started[2:] if n not in dict(running)]
        assert sorted({n for n, _ in late}) == sorted(set(range(6)) - {n for n, _ in running})
        if bus.broker.capabilities.uncounted_release:
            assert {attempt for _, attempt in late} == {1}, "a delivery never started was counted"

    async def test_a_payload_over_the_limit_is_refused_and_one_at_it_arrives(self) -> None:
        event_cls, router = self.event(), Router()
        got: list[Any] = []
        router.subscribe(event_cls)(collect(got))
        async with self.bus(router) as bus:
            limit = bus.max_message_bytes
            assert limit == bus.broker.max_message_bytes
            overhead = len(event_cls(n=1).model_dump_json())
            with pytest.raises(PublishError, match="max_message_bytes"):
                await bus.publish(event_cls(n=1, text="x" * (limit - overhead + 1)))
            with pytest.raises(PublishError, match="max_message_bytes"):
                await bus.publish_many([event_cls(n=2), event_cls(n=3, text="x" * limit)])
            if limit <= _LARGEST_SENT:
                at_limit = await bus.publish(event_cls(n=4, text="x" * (limit - overhead)))
                assert len(at_limit.data) == limit
                await self.wait(lambda: len(got) == 1, "the event at the limit is handled")
                assert got[0].n == 4
            await bus.publish(event_cls(n=5))
            await self.wait(lambda: any(e.n == 5 for e in got), "a small event is handled")
        assert sorted(e.n for e in got) == ([4, 5] if limit <= _LARGEST_SENT else [5])

    async def test_events_wait_for_a_group_whose_consumer_is_stopped(self) -> None:
        self.capability(await self.make_broker(), "persistent")
        event_cls, router, got = self.event(), Router(), list[Any]()
        router.subscribe(event_cls, group=f"{self.ns}-later")(collect(got))
        async with self.bus(router):  # the group exists from here on
            pass
        async with self.bus(service="producer") as producer:  # no consumer runs meanwhile
            await producer.publish(event_cls(n=1))
        async with self.bus(router):  # a new adapter instance
            await self.wait(lambda: len(got) == 1, "the waiting event is handled")
        assert got[0].n == 1

    async def test_a_message_whose_consumer_died_is_delivered_again(self) -> None:
        broker = await self.make_broker()
        self.capability(broker, "persistent")  # an in-process broker dies with its consumer
        event_cls = self.event()
        view = _View(f"{self.ns}-crash", event_cls.destination())
        await broker.connect()
        consumer = await broker.subscribe(view)
        sent = Envelope(id=f"{self.ns}-1", type=event_cls.event_type, source="p", data=b'{"n":1}')
        await broker.publish(event_cls.destination(), sent)
        taken = await asyncio.wait_for(anext(aiter(consumer)), self.timeout)
        assert (taken.envelope and taken.envelope.id) == sent.id
        await broker.close()  # the process is gone: nothing settled, the consumer not closed
        router, seen = Router(), list[int]()

        @router.subscribe(event_cls, group=view.group)
        async def again(event: Ping, ctx: Context) -> None:
            seen.append(ctx.attempt)

        async with self.bus(router):
            await self.wait(lambda: len(seen) >= 1, "the message is delivered again")
        counted = broker.capabilities.counts_crash_redeliveries
        assert seen[0] == (2 if counted else 1)


@dataclasses.dataclass(frozen=True)
class _View:
    """A subscription as an adapter sees it, for tests that drive an adapter directly."""

    group: str
    topic: str
    name: str = "contract.direct"
    is_pattern: bool = False
    concurrency: int = 1
