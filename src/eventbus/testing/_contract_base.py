"""The plumbing of :class:`eventbus.testing.BrokerContract`: settings, buses, waits, helpers."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, ClassVar

import pytest

from eventbus.bus import EventBus
from eventbus.clock import FakeClock
from eventbus.context import Context, Middleware
from eventbus.envelope import Envelope
from eventbus.errors import PermanentError
from eventbus.event import Event
from eventbus.router import Router
from eventbus.types import Broker

__all__ = ["ContractBase", "Ping", "collect", "collect_envelopes", "ping_type", "refuse"]


class Ping(Event):
    """The contract's event; each test publishes it under a type name of its own."""

    n: int
    text: str = ""


def ping_type(type_name: str) -> type[Ping]:
    """A ``Ping`` subclass whose event type is ``type_name``."""
    return type(f"Ping_{abs(hash(type_name))}", (Ping,), {"event_type": type_name})


class ContractBase:
    """What every part of the conformance suite shares: settings, buses, waits, capabilities."""

    pytestmark: ClassVar[Any] = pytest.mark.anyio
    timeout: ClassVar[float] = 10.0
    """Deadline for every wait in the suite."""
    retry_delay: ClassVar[float] = 0.5
    """Delay used by the delayed-redelivery test (real seconds unless ``make_clock`` is fake)."""

    ns: str
    clock: FakeClock | None

    async def make_broker(self) -> Broker:
        """A new adapter instance talking to the broker under test."""
        raise NotImplementedError("subclass BrokerContract and implement make_broker()")

    def make_clock(self) -> FakeClock | None:
        """A fake clock the adapter's delays run on, if it takes one (``None``: real time)."""
        return None

    async def send_raw(
        self,
        broker: Broker,
        destination: str,
        body: bytes,
        headers: Mapping[str, Any] | None = None,
    ) -> None:
        """Put raw bytes (and headers) on ``destination`` the way a foreign producer would."""
        send = getattr(broker, "send_raw", None)
        if send is None:
            pytest.fail(f"{type(broker).__name__} has no send_raw(); override send_raw()")
        await send(destination, body, headers)

    def raw_header_value(self) -> Any:
        """A Hypothesis strategy for header values this broker's raw producer can send."""
        from hypothesis import strategies as st

        return st.one_of(st.text(max_size=40), st.binary(max_size=40))

    async def unsettled(self, broker: Broker, group: str, destination: str) -> int:
        """How many messages of ``group`` on ``destination`` the broker still holds unsettled
        (pending, unacknowledged, uncommitted), read after the bus stopped. Adapters whose
        ``pending()`` cannot tell (it returns None) override it with their raw client."""
        pending = broker.pending()
        if pending is None:
            pytest.fail(f"override unsettled() for {type(broker).__name__}")
        return sum(pending.values())

    # ---------------------------------------------------------------- plumbing
    @pytest.fixture(autouse=True)
    def _contract_setup(self) -> None:
        self.ns = f"c{uuid.uuid4().hex[:10]}"
        self.clock = self.make_clock()

    def event(self, name: str = "ping") -> type[Ping]:
        return ping_type(f"{self.ns}.{name}")

    @contextlib.asynccontextmanager
    async def bus(
        self, *routers: Router, service: str = "svc", middleware: tuple[Middleware, ...] = ()
    ) -> AsyncIterator[EventBus]:
        bus = EventBus(
            await self.make_broker(),
            service=f"{self.ns}-{service}",
            routers=routers,
            middleware=middleware,
            shutdown_timeout=5.0,
            redelivery_delay=self.retry_delay,
        )
        async with bus:
            yield bus

    async def wait(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + self.timeout
        while not condition():
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {self.timeout}s waiting until {what}")
            await asyncio.sleep(0.005)

    def capability(self, broker: Broker, name: str) -> None:
        if not getattr(broker.capabilities, name):
            pytest.skip(f"adapter does not declare the {name!r} capability")

    async def _dead_letters(self, bus: EventBus, group: str, count: int) -> list[Any]:
        records: list[Any] = []

        async def enough() -> bool:
            records[:] = await bus.dead_letters.list(group=group)
            return len(records) >= count

        deadline = time.monotonic() + self.timeout
        while not await enough():
            if time.monotonic() > deadline:
                pytest.fail(f"expected {count} dead letters in {group}, found {len(records)}")
            await asyncio.sleep(0.01)
        return records


def collect(into: list[Any], *, context: bool = False) -> Callable[..., Any]:
    if context:

        async def with_context(event: Ping, ctx: Context) -> None:
            into.append((event, ctx))

        return with_context

    async def handler(event: Ping) -> None:
        into.append(event)

    return handler


def collect_envelopes(into: list[Envelope]) -> Callable[..., Any]:
    async def handler(envelope: Envelope) -> None:
        into.append(envelope)

    return handler


async def refuse(event: Ping) -> None:
    raise PermanentError("refused")
