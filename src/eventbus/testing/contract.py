"""``BrokerContract``: the behaviours every broker adapter must show, as a pytest suite.

Subclass it in a test module and say how to make an adapter; every test runs through the
whole stack (``EventBus`` → adapter → broker → adapter → handler), so passing it means a
handler behaves the same on this broker as on the others::

    class TestRedisContract(BrokerContract):
        async def make_broker(self) -> Broker:
            return RedisBroker(os.environ["EVENTBUS_TEST_REDIS_URL"])

Tests that need a capability the adapter does not declare (``Broker.capabilities``) are
skipped for that reason — never by adapter name. Each test uses event types and groups of its
own (``self.ns``), so adapters may share one server between tests.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from typing import Any

import pytest

from eventbus.context import Context
from eventbus.deadletters import MAX_ERROR_MESSAGE, MAX_TRACEBACK
from eventbus.envelope import Envelope, decode
from eventbus.errors import DeadLetterNotFound, PermanentError, RetryLater
from eventbus.middleware.retry import Retry
from eventbus.router import Router
from eventbus.testing._contract_base import Ping, collect, collect_envelopes, refuse
from eventbus.testing.contract_lifecycle import LifecycleContract
from eventbus.testing.contract_malformed import MalformedInputContract

__all__ = ["BrokerContract"]


class BrokerContract(LifecycleContract, MalformedInputContract):
    """The conformance suite. Override :meth:`make_broker`; optionally the class settings."""

    async def test_round_trip_keeps_every_attribute(self) -> None:
        event_cls, router = self.event(), Router()
        got: list[Any] = []
        router.subscribe(event_cls)(collect(got, context=True))
        async with self.bus(router) as bus:
            sent = await bus.publish(
                event_cls(n=1, text="héllo ✓"), key="k-1", headers={"tenant": "acme"}
            )
            await self.wait(lambda: len(got) == 1, "the event is handled")
        event, ctx = got[0]
        assert event == event_cls(n=1, text="héllo ✓")
        received = ctx.envelope
        for name in ("id", "type", "source", "partitionkey", "correlationid", "dataversion"):
            assert getattr(received, name) == getattr(sent, name), name
        assert received.time == sent.time
        assert received.extensions["tenant"] == "acme"
        assert ctx.attempt == 1

    async def test_every_group_gets_a_copy(self) -> None:
        event_cls, router = self.event(), Router()
        a: list[Any] = []
        b: list[Any] = []
        router.subscribe(event_cls, group=f"{self.ns}-a")(collect(a))
        router.subscribe(event_cls, group=f"{self.ns}-b")(collect(b))
        async with self.bus(router) as bus:
            self.capability(bus.broker, "consumer_groups")
            for n in range(5):
                await bus.publish(event_cls(n=n))
            await self.wait(lambda: len(a) == 5 and len(b) == 5, "both groups have all 5")
        assert sorted(e.n for e in a) == sorted(e.n for e in b) == list(range(5))

    async def test_consumers_in_one_group_share_the_work(self) -> None:
        event_cls = self.event()
        got: list[Any] = []
        first, second = Router(), Router()
        first.subscribe(event_cls, group=f"{self.ns}-workers")(collect(got))
        second.subscribe(event_cls, group=f"{self.ns}-workers")(collect(got))
        async with self.bus(first) as bus, self.bus(second, service="other"):
            self.capability(bus.broker, "consumer_groups")
            for n in range(20):
                await bus.publish(event_cls(n=n), key=f"k{n}")
            await self.wait(lambda: len(got) >= 20, "20 events are handled")
        assert sorted(e.n for e in got) == list(range(20))

    async def test_acknowledged_events_are_not_delivered_again(self) -> None:
        event_cls, router = self.event(), Router()
        got: list[Any] = []
        router.subscribe(event_cls, group=f"{self.ns}-g")(collect(got))
        async with self.bus(router) as bus:
            await bus.publish(event_cls(n=1), key="same")
            await self.wait(lambda: len(got) == 1, "the first event is handled")
        async with self.bus(router) as bus:
            await bus.publish(event_cls(n=2), key="same")
            await self.wait(lambda: len(got) == 2, "the second event is handled")
        assert [e.n for e in got] == [1, 2]

    async def test_failed_event_comes_back_with_next_attempt(self) -> None:
        event_cls, router = self.event(), Router()
        attempts: list[int] = []

        @router.subscribe(event_cls)
        async def flaky(event: Ping, ctx: Context) -> None:
            attempts.append(ctx.attempt)
            if ctx.attempt == 1:
                raise RuntimeError("first attempt fails")

        async with self.bus(router) as bus:  # no middleware: the bare policy redelivers later
            await bus.publish(event_cls(n=1))
            await self.wait(lambda: len(attempts) == 1, "the event is handled")
            if self.clock is not None:
                clock = self.clock
                await self.wait(lambda: clock.sleepers > 0, "the redelivery is scheduled")
                await self.clock.advance(self.retry_delay)
            await self.wait(lambda: len(attempts) == 2, "the event is delivered again")
        assert attempts == [1, 2]

    async def test_retry_later_waits_without_blocking_others(self) -> None:
        event_cls, router = self.event(), Router()
        seen: list[tuple[int, int, float]] = []

        @router.subscribe(event_cls, concurrency=1)
        async def later(event: Ping, ctx: Context) -> None:
            seen.append((event.n, ctx.attempt, time.monotonic()))
            if event.n == 1 and ctx.attempt == 1:
                raise RetryLater(self.retry_delay)

        async with self.bus(router) as bus:
            self.capability(bus.broker, "delayed_redelivery")
            # One key, so the two are ordered on every broker: the delayed first event must not
            # hold back the second, even on its own partition.
            await bus.publish(event_cls(n=1), key="k")
            await bus.publish(event_cls(n=2), key="k")
            await self.wait(lambda: any(n == 2 for n, _, _ in seen), "the second event is handled")
            assert [(n, a) for n, a, _ in seen] == [(1, 1), (2, 1)]
            if self.clock is not None:
                await self.clock.advance(self.retry_delay)
            await self.wait(lambda: len(seen) == 3, "the delayed event comes back")
        assert (seen[2][0], seen[2][1]) == (1, 2)
        if self.clock is None:
            assert seen[2][2] - seen[0][2] >= self.retry_delay * 0.8

    async def test_permanent_failure_is_dead_lettered_with_original_bytes(self) -> None:
        event_cls, router = self.event(), Router()

        @router.subscribe(event_cls, group=f"{self.ns}-dlq")
        async def refuse(event: Ping) -> None:
            raise PermanentError(f"cannot handle {event.n}")

        async with self.bus(router) as bus:
            self.capability(bus.broker, "dead_letters")
            sent = await bus.publish(event_cls(n=7, text="keep me"))
            records = await self._dead_letters(bus, f"{self.ns}-dlq", 1)
        record = records[0]
        assert record.event_id == sent.id
        assert record.event_type == sent.type
        assert record.destination == event_cls.destination()
        assert record.group == f"{self.ns}-dlq"
        assert "cannot handle 7" in record.error_message
        assert record.error_type.endswith("PermanentError")
        assert record.attempts == 1
        assert "refuse" in record.subscription
        assert "PermanentError" in record.traceback
        assert decode(record.headers, record.body).data == sent.data

    async def test_every_field_of_a_dead_letter_survives_the_round_trip(self) -> None:
        event_cls, router, group = self.event(), Router(), f"{self.ns}-fields"
        message = "ünïcødé failure " + "x" * 9000  # longer than a record keeps, in both fields

        @router.subscribe(event_cls, group=group)
        async def always_fails(event: Ping) -> None:
            raise RuntimeError(message)

        traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        envelope = Envelope(
            id=f"{self.ns}-e1",
            type=event_cls.event_type,
            source="producer",
            data=b'{"n":1}',
            time=datetime.now(timezone.utc),
            traceparent=traceparent,
            partitionkey="k-1",
        )
        retry = Retry(tries=1, delays=(self.retry_delay,))
        async with self.bus(router, middleware=(retry,)) as bus:
            self.capability(bus.broker, "dead_letters")
            await bus.publish_envelope(envelope, event_cls.destination())
            if self.clock is not None:
                clock = self.clock
                await self.wait(lambda: clock.sleepers > 0, "the retry is scheduled")
                await clock.advance(self.retry_delay)
            [record] = await self._dead_letters(bus, group, 1)
            assert await bus.dead_letters.get(record.id) == record
        assert record.id
        assert (record.destination, record.group) == (event_cls.destination(), group)
        assert record.subscription.endswith("always_fails")
        assert record.reason == "retries exhausted after 2 deliveries"
        assert (record.error_type, record.attempts) == ("builtins.RuntimeError", 2)
        assert record.error_message == message[:MAX_ERROR_MESSAGE]
        assert len(record.traceback) == MAX_TRACEBACK
        assert record.traceback.endswith("replay it with bus.dead_letters.replay(id)")  # its tail
        assert (record.event_id, record.event_type) == (envelope.id, envelope.type)
        assert record.traceparent == traceparent
        assert decode(record.headers, record.body) == envelope
        first, last = record.first_failure_at, record.last_failure_at
        assert first is not None
        assert last is not None
        assert first.tzinfo is not None
        assert first < last  # the first delivery's failure, carried to the second

    async def test_replay_redelivers_the_same_event_id(self) -> None:
        event_cls, router = self.event(), Router()
        handled: list[str] = []
        fail = {"on": True}

        @router.subscribe(event_cls, group=f"{self.ns}-replay")
        async def sometimes(event: Ping, ctx: Context) -> None:
            if fail["on"]:
                raise PermanentError("not yet")
            handled.append(ctx.envelope.id)

        async with self.bus(router) as bus:
            self.capability(bus.broker, "dead_letters")
            sent = await bus.publish(event_cls(n=1))
            records = await self._dead_letters(bus, f"{self.ns}-replay", 1)
            fail["on"] = False
            await bus.dead_letters.replay(records[0].id)
            await self.wait(lambda: handled == [sent.id], "the replayed event is handled")
            assert await bus.dead_letters.get(records[0].id) is None
            with pytest.raises(DeadLetterNotFound, match=r"list them with .*dead_letters\.list"):
                await bus.dead_letters.replay(records[0].id)
            with pytest.raises(DeadLetterNotFound, match="'no-such-id'"):
                await bus.dead_letters.replay("no-such-id")

    async def test_purge_removes_dead_letters(self) -> None:
        event_cls, router = self.event(), Router()
        router.subscribe(event_cls, group=f"{self.ns}-purge")(refuse)
        async with self.bus(router) as bus:
            self.capability(bus.broker, "dead_letters")
            for n in range(3):
                await bus.publish(event_cls(n=n))
            await self._dead_letters(bus, f"{self.ns}-purge", 3)
            assert await bus.dead_letters.purge(group=f"{self.ns}-purge") == 3
            assert await bus.dead_letters.list(group=f"{self.ns}-purge") == []

    async def test_undecodable_bytes_are_dead_lettered_and_others_flow(self) -> None:
        event_cls, router = self.event(), Router()
        got: list[Any] = []
        router.subscribe(event_cls, group=f"{self.ns}-junk")(collect(got))
        junk = b"\x00\xffnot an event"
        async with self.bus(router) as bus:
            await self.send_raw(bus.broker, event_cls.destination(), junk)
            await bus.publish(event_cls(n=1))
            await self.wait(lambda: len(got) == 1, "the good event is handled")
            if bus.broker.capabilities.dead_letters:
                records = await self._dead_letters(bus, f"{self.ns}-junk", 1)
                assert records[0].body == junk
                assert records[0].event_id is None
                assert records[0].reason == "undecodable"

    async def test_a_poison_event_does_not_stop_the_others(self) -> None:
        event_cls, router = self.event(), Router()
        good: list[int] = []

        @router.subscribe(event_cls)
        async def picky(event: Ping) -> None:
            if event.n == 0:
                raise RuntimeError("poison")
            good.append(event.n)

        async with self.bus(router) as bus:
            await bus.publish(event_cls(n=0))
            for n in range(1, 6):
                await bus.publish(event_cls(n=n))
            await self.wait(lambda: len(good) == 5, "the five good events are handled")
        assert sorted(good) == [1, 2, 3, 4, 5]

    async def test_patterns_route_by_type_words(self) -> None:
        router = Router()
        star: list[Envelope] = []
        hashed: list[Envelope] = []
        router.subscribe(f"{self.ns}.user.*")(collect_envelopes(star))
        router.subscribe(f"{self.ns}.#")(collect_envelopes(hashed))
        # Checked before the bus starts: an adapter may refuse patterns at subscribe time.
        self.capability(await self.make_broker(), "pattern_subscriptions")
        async with self.bus(router) as bus:
            for name in ("user.created", "user.deleted", "order.created", "user.profile.updated"):
                await bus.publish(self.event(name)(n=1))
            await self.wait(lambda: len(star) == 2 and len(hashed) == 4, "patterns match")
        assert sorted(e.type for e in star) == [
            f"{self.ns}.user.{a}" for a in ("created", "deleted")
        ]

    async def test_order_is_kept_per_key_under_concurrency(self) -> None:
        event_cls, router = self.event(), Router()
        seen: dict[str | None, list[int]] = {}

        @router.subscribe(event_cls, concurrency=8)
        async def record(event: Ping, ctx: Context) -> None:
            await asyncio.sleep(0)  # let other keys interleave
            seen.setdefault(ctx.envelope.partitionkey, []).append(event.n)

        async with self.bus(router) as bus:
            self.capability(bus.broker, "ordered_per_key")
            for n in range(60):
                await bus.publish(event_cls(n=n), key=f"k{n % 3}")
            await self.wait(lambda: sum(len(v) for v in seen.values()) == 60, "all 60 handled")
        for i in range(3):
            assert seen[f"k{i}"] == list(range(i, 60, 3))

    async def test_publish_many_delivers_every_event(self) -> None:
        event_cls, router = self.event(), Router()
        got: list[Any] = []
        router.subscribe(event_cls)(collect(got))
        async with self.bus(router) as bus:
            sent = await bus.publish_many([event_cls(n=n) for n in range(50)])
            await self.wait(lambda: len(got) == 50, "50 events are handled")
        assert len({e.id for e in sent}) == 50
        assert sorted(e.n for e in got) == list(range(50))

    async def test_follow_up_events_carry_causation(self) -> None:
        first, second, router = self.event("first"), self.event("second"), Router()
        seen: list[Any] = []

        @router.subscribe(first)
        async def react(event: Ping, ctx: Context) -> None:
            await ctx.publish(second(n=event.n + 1))

        router.subscribe(second)(collect(seen, context=True))
        async with self.bus(router) as bus:
            origin = await bus.publish(first(n=1))
            await self.wait(lambda: len(seen) == 1, "the follow-up is handled")
        follow_up = seen[0][1].envelope
        assert follow_up.causationid == origin.id
        assert follow_up.correlationid == origin.correlationid
