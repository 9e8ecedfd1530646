"""What every benchmark implementation shares: the event, the workload interface, the modes.

A *workload* is one implementation (eventbus, the raw client, FastStream, a bare queue) on one
broker. It owns a fresh topic/queue/stream called ``channel``, one producer and one consumer
group whose handler validates each message into :class:`UserCreated` and then calls
``on_event``; the message is acknowledged only after that (at-least-once). The harness in
:mod:`bench.trial` drives it in one of the modes below and measures it.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable, Sequence
from typing import Any

from eventbus import Event, EventBus, Router

MODES = ("single", "batch", "concurrent", "latency")
"""``single``: awaited one-by-one publishes. ``batch``: batched/pipelined publishes of
``BATCH`` events. ``concurrent``: ``PUBLISHERS`` tasks, each awaiting its own publish.
``latency``: closed loop, one event in flight, publish → handled."""

BATCH = 100
PUBLISHERS = 100
PREFETCH = 100
"""Consumer-side prefetch / batch size wherever the client has one."""


class UserCreated(Event):
    """About 200 bytes of JSON, like a typical domain event."""

    user_id: str
    email: str
    name: str
    plan: str
    country: str
    referrer: str | None
    marketing_opt_in: bool
    signup_ip: str


def baseline(broker: str) -> str:
    """What eventbus is measured against on ``broker``: the bare queue loop in memory, else
    the raw client."""
    return "bare" if broker == "memory" else "raw"


def make_event(n: int) -> UserCreated:
    return UserCreated(
        user_id=f"user-{n:08d}",
        email=f"user{n}@example.com",
        name="Ada Lovelace-Byron",
        plan="team-annual",
        country="GB",
        referrer="newsletter-2026-11",
        marketing_opt_in=n % 2 == 0,
        signup_ip="203.0.113.42",
    )


def encode(event: UserCreated) -> bytes:
    """The JSON every raw implementation sends (pydantic's own serializer, as eventbus uses)."""
    return event.__pydantic_serializer__.to_json(event)


def decode(body: bytes | str) -> UserCreated:
    return UserCreated.model_validate_json(body)


def server_url(broker: str) -> str:
    """The server a networked benchmark uses: ``EVENTBUS_TEST_<BROKER>_URL`` (scripts/services)."""
    var = f"EVENTBUS_TEST_{broker.upper()}_URL"
    url = os.environ.get(var)
    if not url:
        raise SystemExit(f"{var} is not set: run the benchmarks with scripts/bench")
    return url


class Workload(abc.ABC):
    """One implementation on one broker; see the module documentation."""

    def __init__(self, url: str, channel: str, on_event: Callable[[UserCreated], None]) -> None:
        self.url = url
        self.channel = channel
        self.on_event = on_event

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect, declare what the channel needs, and start the consumer group."""

    @abc.abstractmethod
    async def publish(self, event: UserCreated) -> None:
        """Publish one event; return only once the broker has it (confirm / ack / reply)."""

    @abc.abstractmethod
    async def publish_batch(self, events: Sequence[UserCreated]) -> None:
        """Publish several events in as few round trips as the client allows; same guarantee."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop consuming and close every connection (what the trial made stays)."""

    @abc.abstractmethod
    async def unsettled(self) -> int:
        """After :meth:`stop`: the messages of the trial the broker still holds as not
        acknowledged (pending entries, uncommitted offsets, messages back in the queue).
        The harness reports it for every trial; anything but 0 is a lost acknowledgement."""

    async def cleanup(self) -> None:
        """After :meth:`unsettled`: remove what the trial left on the server."""
        return


class EventBusWorkload(Workload):
    """eventbus through its public API only, with its default middleware chain.

    Subclasses say which ``broker_options`` the bus gets and whether the trial's channel is
    the event's topic (``topic_per_trial``: ``UserCreated.event_topic`` points at ``channel``
    for the trial's process, which runs nothing else) or something the options name.
    """

    topic_per_trial = True

    def broker_options(self) -> dict[str, Any]:
        return {}

    def group(self) -> str:
        return "bench"

    async def start(self) -> None:
        self.saved_topic = UserCreated.event_topic
        if self.topic_per_trial:
            UserCreated.event_topic = self.channel
        router = Router()
        on_event = self.on_event

        @router.subscribe(UserCreated, group=self.group())
        async def handle(event: UserCreated) -> None:
            on_event(event)

        url = self.url or "memory://"
        self.bus = EventBus(url, service="bench", routers=[router], **self.broker_options())
        await self.bus.start()

    async def publish(self, event: UserCreated) -> None:
        await self.bus.publish(event)

    async def publish_batch(self, events: Sequence[UserCreated]) -> None:
        await self.bus.publish_many(events)

    async def stop(self) -> None:
        await self.bus.stop()
        UserCreated.event_topic = self.saved_topic
