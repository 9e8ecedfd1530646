"""EventBus behaviour on the memory broker: publishing, the consume policy, lifecycle, errors."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from eventbus import (
    BusNotStarted,
    ConfigurationError,
    Context,
    Envelope,
    Event,
    EventBus,
    NoHandlerError,
    PublishError,
    Router,
)
from eventbus.brokers import register_broker
from eventbus.publishing import new_event_id
from eventbus.testing import published, wait_until

pytestmark = pytest.mark.anyio


class UserRegistered(Event):
    user_id: str
    email: str = "a@example.com"


class WelcomeSent(Event):
    user_id: str


class Anything(Event):
    value: Any


async def test_publish_returns_the_envelope_it_sent() -> None:
    async with EventBus("memory://", service="auth") as bus:
        envelope = await bus.publish(
            UserRegistered(user_id="u1"), key="u1", headers={"tenant": "a"}
        )
    assert envelope.type == "UserRegistered"
    assert envelope.source == "auth"
    assert envelope.partitionkey == "u1"
    assert envelope.dataversion == 1
    assert envelope.correlationid == envelope.id  # a root event starts its own correlation
    assert envelope.causationid is None
    assert envelope.extensions == {"tenant": "a"}
    assert UserRegistered.model_validate_json(envelope.data) == UserRegistered(user_id="u1")
    assert published(bus) == [envelope]


def test_event_ids_are_unique_uuid4_text_and_differ_in_a_forked_child() -> None:
    ids = [new_event_id() for _ in range(1000)]
    assert len(set(ids)) == len(ids)
    assert all(str(uuid.UUID(i)) == i and uuid.UUID(i).version == 4 for i in ids)
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child reports the ids it would hand out next, then leaves at once
        os.write(write, " ".join(new_event_id() for _ in range(3)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    with os.fdopen(read) as pipe:
        from_child = pipe.read().split()
    assert len(from_child) == 3
    assert not set(from_child) & {new_event_id() for _ in range(3)}


async def test_publish_headers_cannot_be_changed_through_the_envelope() -> None:
    headers = {"tenant": "a"}
    async with EventBus("memory://") as bus:
        envelope = await bus.publish(UserRegistered(user_id="u1"), headers=headers)
    headers["tenant"] = "b"
    assert envelope.extensions == {"tenant": "a"}


async def test_publishing_before_start_says_what_to_do() -> None:
    bus = EventBus("memory://")
    with pytest.raises(BusNotStarted, match="async with bus"):
        await bus.publish(UserRegistered(user_id="u1"))
    async with bus:
        pass
    with pytest.raises(BusNotStarted):
        await bus.publish(UserRegistered(user_id="u1"))


async def test_a_non_serialisable_payload_fails_the_publish() -> None:
    async with EventBus("memory://") as bus:
        with pytest.raises(PublishError, match="cannot encode Anything as JSON"):
            await bus.publish(Anything(value=object()))
        assert published(bus) == []


async def test_headers_must_be_cloudevents_extension_names() -> None:
    async with EventBus("memory://") as bus:
        with pytest.raises(ConfigurationError, match="try 'xtenant'"):
            await bus.publish(UserRegistered(user_id="u1"), headers={"x-tenant": "a"})


async def test_strict_bus_rejects_an_event_nobody_handles_and_suggests_the_name() -> None:
    router = Router()

    @router.subscribe("UserRegistered")
    async def handle(event: UserRegistered) -> None: ...

    class UserRegistred(Event):  # the typo a strict test bus catches
        user_id: str

    async with EventBus("memory://", routers=[router], strict=True) as bus:
        with pytest.raises(NoHandlerError, match="did you mean 'UserRegistered'"):
            await bus.publish(UserRegistred(user_id="u1"))


async def test_lenient_bus_warns_once_about_an_unhandled_type(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with EventBus("memory://") as bus:
        with caplog.at_level(logging.WARNING, logger="eventbus.memory"):
            await bus.publish(UserRegistered(user_id="u1"))
            await bus.publish(UserRegistered(user_id="u2"))
    warning = "no subscription accepts event type 'UserRegistered' on 'UserRegistered'"
    assert [r.getMessage() for r in caplog.records].count(f"{warning}; the event is dropped") == 1


async def test_follow_ups_carry_causation_and_correlation_without_user_code() -> None:
    router = Router()

    @router.subscribe(UserRegistered)
    async def welcome(event: UserRegistered, ctx: Context) -> None:
        await ctx.bus.publish(WelcomeSent(user_id=event.user_id))  # plain bus.publish, too

    @router.subscribe(WelcomeSent)
    async def done(event: WelcomeSent) -> None: ...

    async with EventBus("memory://", routers=[router]) as bus:
        root = await bus.publish(UserRegistered(user_id="u1"))
        await bus.drain()
        [follow_up] = published(bus, WelcomeSent)
    assert follow_up.causationid == root.id
    assert follow_up.correlationid == root.correlationid


async def test_plain_functions_run_in_a_worker_thread() -> None:
    router, threads = Router(), []

    @router.subscribe(UserRegistered)
    def blocking(event: UserRegistered) -> None:
        threads.append(threading.get_ident())

    async with EventBus("memory://", routers=[router]) as bus:
        await bus.publish(UserRegistered(user_id="u1"))
        await bus.drain()
    assert threads
    assert threads[0] != threading.get_ident()


async def test_invalid_payload_is_dead_lettered_and_the_consumer_goes_on() -> None:
    router, handled = Router(), []

    @router.subscribe(UserRegistered, group="g")
    async def handle(event: UserRegistered) -> None:
        handled.append(event.user_id)

    async with EventBus("memory://", routers=[router]) as bus:
        bad = Envelope(id="bad-1", type="UserRegistered", source="x", data=b'{"email": 3}')
        await bus.publish_envelope(bad)
        await bus.publish(UserRegistered(user_id="u2"))
        await bus.drain()
        [record] = await bus.dead_letters.list(group="g")
    assert handled == ["u2"]
    assert record.event_id == "bad-1"
    assert "does not match UserRegistered" in record.error_message
    assert record.attempts == 1  # validation failures are not retried


async def test_concurrency_runs_different_keys_in_parallel_up_to_the_limit() -> None:
    router, running, peak = Router(), set(), [0]
    release = asyncio.Event()

    @router.subscribe(UserRegistered, concurrency=3)
    async def slow(event: UserRegistered) -> None:
        running.add(event.user_id)
        peak[0] = max(peak[0], len(running))
        await release.wait()
        running.discard(event.user_id)

    async with EventBus("memory://", routers=[router]) as bus:
        for n in range(6):
            await bus.publish(UserRegistered(user_id=f"u{n}"), key=f"k{n}")
        await wait_until(lambda: len(running) == 3, timeout=5)
        release.set()
        await bus.drain()
    assert peak[0] == 3


async def test_events_with_one_key_wait_for_each_other() -> None:
    router, running, order = Router(), set(), []
    release = asyncio.Event()

    @router.subscribe(UserRegistered, concurrency=4)
    async def slow(event: UserRegistered) -> None:
        running.add(event.user_id)
        await release.wait()
        order.append(event.user_id)
        running.discard(event.user_id)

    async with EventBus("memory://", routers=[router]) as bus:
        for n in range(3):
            await bus.publish(UserRegistered(user_id=f"u{n}"), key="same")
        await wait_until(lambda: bool(running), timeout=5)
        await asyncio.sleep(0)
        assert running == {"u0"}
        release.set()
        await bus.drain()
    assert order == ["u0", "u1", "u2"]


async def test_default_group_is_service_and_function_name() -> None:
    router = Router()

    @router.subscribe(UserRegistered)
    async def send_welcome(event: UserRegistered) -> None: ...

    bus = EventBus("memory://", service="email", routers=[router])
    assert [s.group for s in bus.subscriptions] == ["email.send_welcome"]


def test_two_handlers_in_one_group_on_one_topic_are_refused() -> None:
    first, second = Router(), Router()
    first.subscribe(UserRegistered, group="g")(_noop)
    second.subscribe(UserRegistered, group="g")(_noop)
    with pytest.raises(ConfigurationError, match="give one of them its own group"):
        EventBus("memory://", routers=[first, second]).subscriptions  # noqa: B018


async def test_routers_cannot_be_added_to_a_running_bus() -> None:
    async with EventBus("memory://") as bus:
        with pytest.raises(ConfigurationError, match="before the bus starts"):
            bus.include_router(Router())
        with pytest.raises(ConfigurationError, match="before the bus starts"):
            bus.subscribe(UserRegistered)


async def test_publish_many_accepts_events_and_keyed_pairs() -> None:
    router, seen = Router(), list[str]()
    router.subscribe(UserRegistered)(_collector(seen))
    async with EventBus("memory://", routers=[router]) as bus:
        sent = await bus.publish_many(
            [UserRegistered(user_id="u1"), (UserRegistered(user_id="u2"), "k")]
        )
        await bus.drain()
    assert [e.partitionkey for e in sent] == [None, "k"]
    assert sorted(seen) == ["u1", "u2"]


async def test_two_services_share_a_named_memory_broker() -> None:
    router, seen = Router(), list[str]()
    router.subscribe(UserRegistered)(_collector(seen))
    async with (
        EventBus("memory://shared-test", service="email", routers=[router]) as consumer,
        EventBus("memory://shared-test", service="auth") as producer,
    ):
        await producer.publish(UserRegistered(user_id="u1"))
        await consumer.drain()
    assert seen == ["u1"]


async def test_drain_names_what_is_left_when_it_times_out() -> None:
    router = Router()

    @router.subscribe(UserRegistered)
    async def stuck(event: UserRegistered) -> None:
        await asyncio.Event().wait()

    bus = EventBus("memory://", routers=[router], shutdown_timeout=0.01)
    async with bus:
        await bus.publish(UserRegistered(user_id="u1"))
        with pytest.raises(TimeoutError, match="'unsettled': 1"):
            await bus.drain(timeout=0.05)


def test_unknown_broker_scheme_lists_the_known_ones() -> None:
    with pytest.raises(ConfigurationError, match=r"use one of .*memory://.*did you mean memory://"):
        EventBus("memry://")


def test_a_missing_driver_names_the_pip_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "needs_a_driver.py").write_text("import a_driver_that_is_not_installed\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    register_broker("fakebroker", "needs_a_driver:from_url", extra="fake")
    with pytest.raises(ConfigurationError, match=r'pip install "eventbus\[fake\]"'):
        EventBus("fakebroker://localhost")


def test_unknown_memory_url_option_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="unknown memory:// URL option 'stritc'"):
        EventBus("memory://?stritc=1")


def test_service_name_is_required() -> None:
    with pytest.raises(ConfigurationError, match="service"):
        EventBus("memory://", service="")


async def _noop(event: UserRegistered) -> None: ...


def _collector(into: list[str]) -> Any:
    async def collect(event: UserRegistered) -> None:
        into.append(event.user_id)

    return collect


async def test_middleware_runs_outermost_first_in_the_handlers_task() -> None:
    import contextvars

    seen: list[str] = []
    marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="")

    class Mark:
        def __init__(self, name: str) -> None:
            self.name = name

        async def __call__(self, ctx: Context, call_next: Any) -> None:
            seen.append(f"{self.name}>")
            token = marker.set(marker.get() + self.name)
            try:
                await call_next(ctx)
            finally:
                marker.reset(token)
            seen.append(f"<{self.name}")

    router = Router()

    @router.subscribe(UserRegistered, middleware=[Mark("s")])
    async def handle(event: UserRegistered) -> None:
        seen.append(f"handler saw {marker.get()}")

    async with EventBus("memory://", routers=[router], middleware=[Mark("a"), Mark("b")]) as bus:
        await bus.publish(UserRegistered(user_id="u1"))
        await bus.drain()
    assert seen == ["a>", "b>", "s>", "handler saw abs", "<s", "<b", "<a"]


async def test_publish_middleware_may_replace_the_envelope() -> None:
    sent: list[Envelope] = []

    async def stamp(envelope: Envelope, call_next: Any) -> Envelope:
        result: Envelope = await call_next(envelope.replace(subject="stamped"))
        sent.append(result)
        return result

    async with EventBus("memory://", publish_middleware=[stamp]) as bus:
        returned = await bus.publish(UserRegistered(user_id="u1"))
        many = await bus.publish_many([UserRegistered(user_id="u2")])
    assert returned.subject == "stamped"
    assert many[0].subject == "stamped"
    assert [e.subject for e in published(bus)] == ["stamped", "stamped"]


async def test_stop_does_not_hang_on_a_consumer_that_ignores_cancellation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Seen with a network driver: shutdown must finish even if a fetch swallows the cancel."""
    from eventbus.brokers.memory import MemoryBroker, MemoryConsumer

    class Stubborn(MemoryConsumer):
        async def _deliveries(self) -> Any:
            # The bug being defended against: the first cancellation is lost.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.Event().wait()
            await asyncio.Event().wait()  # a second cancellation (the test's clean-up) ends it
            yield  # pragma: no cover

    class StubbornBroker(MemoryBroker):
        async def subscribe(self, subscription: Any) -> Any:
            consumer = await super().subscribe(subscription)
            return Stubborn(self, consumer._group_queue)

    router = Router()
    router.subscribe(UserRegistered)(_noop)
    bus = EventBus(StubbornBroker(), routers=[router], shutdown_timeout=0.1)
    await bus.start()
    await asyncio.wait_for(bus.stop(), timeout=5)
    assert "ignored cancellation" in caplog.text
    leftovers = [t for t in asyncio.all_tasks() if t.get_name().startswith("eventbus:")]
    assert len(leftovers) == 1
    leftovers[0].cancel()
    await asyncio.gather(*leftovers, return_exceptions=True)
