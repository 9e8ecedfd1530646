"""The ``Context`` handed to middleware and handlers, the middleware shape, and causation.

While a handler runs, the envelope it handles is the *current* envelope (a context variable),
so any publish made during the handler — through ``ctx.publish`` or ``bus.publish`` — copies
its ``correlationid`` and sets ``causationid`` to its id, without user code.

The consume-side middleware protocol lives here, next to the ``Context`` it is typed by;
middleware depend on this module and the contract only.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable, Mapping
from typing import Any, Protocol

from eventbus.clock import SystemClock
from eventbus.deadletters import DeadLetterStore
from eventbus.envelope import Envelope
from eventbus.errors import BusNotStarted
from eventbus.event import Event
from eventbus.types import Clock, Delivery, SubscriptionView

__all__ = [
    "Context",
    "Middleware",
    "Next",
    "Publisher",
    "Publishing",
    "current_envelope",
    "staging_session",
]

_SYSTEM_CLOCK = SystemClock()

current_envelope: contextvars.ContextVar[Envelope | None] = contextvars.ContextVar(
    "eventbus_current_envelope", default=None
)
staging_session: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "eventbus_staging_session", default=None
)
"""The database session publishes are staged in (an ``AsyncSession``), while one is set: by
``bus.publish(..., session=s)`` for its own call, and by the ``Inbox`` middleware for the
whole handler, so that ``ctx.publish`` commits together with the handler's writes."""


class Publisher(Protocol):
    """What a context publishes through: the bus (``EventBus`` is one)."""

    @property
    def service(self) -> str: ...

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None: ...

    @property
    def dead_letters(self) -> DeadLetterStore: ...

    async def publish(
        self,
        event: Event,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        subject: str | None = None,
        correlation_id: str | None = None,
        session: Any = None,
    ) -> Envelope: ...

    async def publish_many(
        self,
        events: Iterable[Event | tuple[Event, str | None]],
        *,
        correlation_id: str | None = None,
        session: Any = None,
    ) -> list[Envelope]: ...

    async def publish_envelope(
        self, envelope: Envelope, destination: str | None = None
    ) -> Envelope: ...


class Context:
    """Everything a handler or middleware knows about the delivery being handled.

    ``subscription`` names the handler, its group and topic; ``clock`` is the time the bus's
    delays run on (a test's fake clock on the memory broker). ``state`` is a dict for
    middleware to pass values inward (for example a database session). ``event`` is the
    validated model once the handler's model has been applied.
    """

    __slots__ = (
        "attempt",
        "bus",
        "clock",
        "delivery",
        "envelope",
        "event",
        "session",
        "state",
        "subscription",
    )

    def __init__(
        self,
        envelope: Envelope,
        subscription: SubscriptionView,
        bus: Publisher,
        delivery: Delivery | None = None,
        attempt: int = 1,
        clock: Clock = _SYSTEM_CLOCK,
    ) -> None:
        self.envelope = envelope
        self.subscription = subscription
        self.bus = bus
        self.delivery = delivery
        self.attempt = attempt
        self.clock = clock
        self.event: Event | None = None
        self.session: Any = None
        """The handler's database session, where a middleware opened one (``Inbox``)."""
        self.state: dict[str, Any] = {}

    def publish(
        self,
        event: Event,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        subject: str | None = None,
        correlation_id: str | None = None,
    ) -> Publishing:
        """Publish a follow-up event caused by the one being handled (see ``EventBus.publish``).

        In an ``async def`` handler, await it. In a plain ``def`` handler (which runs in a
        worker thread) call it without ``await``: it sends on the bus's event loop and returns
        once the broker has the event, raising what the publish raised; ``.result()`` of what
        it returns is the envelope that was sent.
        """
        coroutine = self._publish(event, key, headers, subject, correlation_id)
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # a worker thread: run it on the bus's loop and wait
            return Publishing(envelope=self._run_on_bus_loop(coroutine))
        return Publishing(coroutine)

    async def _publish(
        self,
        event: Event,
        key: str | None,
        headers: Mapping[str, str] | None,
        subject: str | None,
        correlation_id: str | None,
    ) -> Envelope:
        token = current_envelope.set(self.envelope)
        try:
            return await self.bus.publish(
                event,
                key=key,
                headers=headers,
                subject=subject,
                correlation_id=correlation_id,
                session=self.session,  # explicit: a worker thread's publish runs in another task
            )
        finally:
            current_envelope.reset(token)

    def _run_on_bus_loop(self, coroutine: Coroutine[Any, Any, Envelope]) -> Envelope:
        loop = self.bus.loop
        if loop is None or loop.is_closed():
            coroutine.close()
            raise BusNotStarted("the bus is not running: ctx.publish needs a started bus")
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result()

    def __repr__(self) -> str:
        return (
            f"Context(type={self.envelope.type!r}, id={self.envelope.id!r}, "
            f"group={self.subscription.group!r}, attempt={self.attempt})"
        )


class Publishing(Awaitable["Envelope"]):
    """What ``ctx.publish`` returns.

    In an ``async def`` handler, await it: the event is sent then, and the result is its
    envelope. In a worker thread (a plain ``def`` handler) the event has been sent by the time
    ``ctx.publish`` returns, and :meth:`result` is its envelope.
    """

    __slots__ = ("_coroutine", "_envelope")

    def __init__(
        self,
        coroutine: Coroutine[Any, Any, Envelope] | None = None,
        envelope: Envelope | None = None,
    ) -> None:
        self._coroutine = coroutine
        self._envelope = envelope

    def result(self) -> Envelope:
        """The envelope that was sent (in a worker thread, where the send has happened)."""
        if self._envelope is None:
            raise RuntimeError("not sent yet: `await ctx.publish(...)` in an async handler")
        return self._envelope

    def __await__(self) -> Generator[Any, None, Envelope]:
        if self._coroutine is None:
            return self.result()
        self._envelope = yield from self._coroutine.__await__()
        return self._envelope


Next = Callable[[Context], Awaitable[None]]
"""What a consume-side middleware calls to run the rest of the chain."""


class Middleware(Protocol):
    """Consume side: ``async def __call__(ctx, call_next)``; the first in the list is outermost.

    Await ``call_next(ctx)`` in the same task, so context variables (and tracing) flow through.
    """

    async def __call__(self, ctx: Context, call_next: Next) -> None: ...
