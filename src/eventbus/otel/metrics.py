"""Metrics: the messaging conventions' four instruments, and eventbus's own.

Conventions (names from the ``opentelemetry-semantic-conventions`` constants):

* ``messaging.client.sent.messages`` (counter): messages the bus tried to send, failures
  included (with ``error.type``); a publish staged in the outbox counts when the relay sends it;
* ``messaging.client.operation.duration`` (histogram, seconds): each send, single or batch;
* ``messaging.client.consumed.messages`` (counter): deliveries handed to a handler;
* ``messaging.process.duration`` (histogram, seconds): the rest of the chain and the handler.

eventbus's own: ``eventbus.retries`` (deliveries settled to be tried again, by
``eventbus.settle.outcome``), ``eventbus.dead_letters`` (dead-lettered by a handler's
failure), ``eventbus.handlers.active`` (handlers running now, observed at collection).
Gauges sampled in the background by :meth:`Metrics.watch`: ``eventbus.consumer.lag`` per
subscription, ``eventbus.dead_letters.depth`` per group, and for an outbox
``eventbus.outbox.pending`` and ``eventbus.outbox.oldest_age``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Iterable, Sequence
from typing import Any, TypeVar

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.semconv._incubating.metrics import messaging_metrics as mm

from eventbus.consume import settle_outcome
from eventbus.context import Context, Next, staging_session
from eventbus.envelope import Envelope
from eventbus.errors import ConfigurationError, DecodeError
from eventbus.otel import semconv as sc
from eventbus.otel.tracing import error_type
from eventbus.types import BusView, Delivery, PublishBatchNext, PublishNext, SubscriptionView

__all__ = ["Metrics"]

T = TypeVar("T")

log = logging.getLogger("eventbus.otel")

DEPTH_LIMIT = 10_000
"""Dead letters are counted up to this many per group (a deeper queue reads as this)."""
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
"""The conventions' advised histogram boundaries, in seconds."""


class Metrics:
    """Counters and histograms for publishing and handling; ``meter_provider`` defaults to the
    global one. One ``Metrics`` serves one broker kind (see ``Tracing``)."""

    def __init__(self, *, meter_provider: Any = None) -> None:
        meter = metrics.get_meter("eventbus", meter_provider=meter_provider)
        buckets = list(DURATION_BUCKETS)
        self.sent = mm.create_messaging_client_sent_messages(meter)
        self.consumed = mm.create_messaging_client_consumed_messages(meter)
        self.operation_duration = meter.create_histogram(
            mm.MESSAGING_CLIENT_OPERATION_DURATION,
            unit="s",
            description="Duration of a messaging operation initiated by the producer.",
            explicit_bucket_boundaries_advisory=buckets,
        )
        self.process_duration = meter.create_histogram(
            mm.MESSAGING_PROCESS_DURATION,
            unit="s",
            description="Duration of processing operation.",
            explicit_bucket_boundaries_advisory=buckets,
        )
        self.retries = meter.create_counter(
            "eventbus.retries", unit="{delivery}", description="Deliveries to be tried again."
        )
        self.dead_letters = meter.create_counter(
            "eventbus.dead_letters", unit="{delivery}", description="Deliveries dead-lettered."
        )
        self.running: dict[tuple[str, str], int] = {}  # (destination, group) -> handlers
        meter.create_observable_up_down_counter(
            "eventbus.handlers.active",
            [self._observe_running],
            unit="{handler}",
            description="Handlers running now.",
        )
        self.samples: dict[str, list[tuple[float, dict[str, Any]]]] = {}
        for name, unit, what in _GAUGES:
            meter.create_observable_gauge(name, [self._observer(name)], unit=unit, description=what)
        self.system: str | None = None
        self.name_of = sc.destination_namer(None)
        self.live = sc.liveness(meter_provider, metrics.get_meter_provider, _no_measurements)
        """Whether measurements are recorded at all: not with a no-op provider, nor with the
        global one while no SDK is set up (then metrics cost one cheap check per message)."""

    def publish_side(self, bus: BusView) -> _PublishSide:
        """The publish half, which the bus puts on its publish chain."""
        self.system = sc.bind_system(self.system, bus.broker, "Metrics")
        self.name_of = sc.destination_namer(bus.broker)
        return _PublishSide(self, bus, self.system)

    async def __call__(self, ctx: Context, call_next: Next) -> None:
        if not self.live():
            await call_next(ctx)
            return
        sub = ctx.subscription
        _, destination = sc.delivered_to(self.name_of, sub, ctx.delivery)
        attributes = sc.process_attributes(self.system, destination, sub.group)
        self.consumed.add(1, attributes)
        running = (destination, sub.group or "")
        self.running[running] = self.running.get(running, 0) + 1
        start = time.perf_counter()
        try:
            await call_next(ctx)
        except BaseException as exc:
            attributes[sc.ERROR_TYPE] = error_type(exc)
            self._count_failure(exc, attributes)
            raise
        finally:
            self.process_duration.record(time.perf_counter() - start, attributes)
            self.running[running] -= 1

    def undecodable(self, sub: SubscriptionView, delivery: Delivery, error: DecodeError) -> None:
        """A message that could not be decoded: consumed, and dead-lettered (the consume
        policy does it next), with ``error.type`` ``DecodeError``."""
        if not self.live():
            return
        _, name = sc.delivered_to(self.name_of, sub, delivery)
        attributes = sc.process_attributes(self.system, name, sub.group)
        attributes[sc.ERROR_TYPE] = type(error).__qualname__
        self.consumed.add(1, attributes)
        self.dead_letters.add(1, attributes)

    def _observe_running(self, options: CallbackOptions) -> Iterable[Observation]:
        system = self.system or "unknown"
        return [
            Observation(count, {sc.SYSTEM: system, sc.DESTINATION: dest, sc.CONSUMER_GROUP: group})
            for (dest, group), count in self.running.items()
        ]

    def _count_failure(self, exc: BaseException, attributes: dict[str, Any]) -> None:
        outcome = settle_outcome(exc)
        if outcome in ("retry_later", "redeliver"):
            self.retries.add(1, {**attributes, sc.SETTLE_OUTCOME: outcome})
        elif outcome == "dead_letter":
            self.dead_letters.add(1, attributes)

    # ---------------------------------------------------------------- gauges
    @contextlib.asynccontextmanager
    async def watch(
        self,
        bus: Any,
        *,
        outbox: Any = None,
        engine: Any = None,
        projections: Sequence[Any] = (),
        interval: float = 15.0,
    ) -> AsyncIterator[None]:
        """Sample the gauges every ``interval`` seconds while the block runs: each
        subscription's lag (where its adapter can tell), each group's dead-letter depth, the
        outbox's backlog (with ``outbox`` and its ``engine``) and each projection runner's
        lag (``projections``: ``ProjectionRunner`` objects)."""
        if (outbox is None) != (engine is None):
            raise ConfigurationError("watch(outbox=..., engine=...) needs both or neither")
        sample = functools.partial(
            self.sample, bus, outbox=outbox, engine=engine, projections=projections
        )
        task = asyncio.get_running_loop().create_task(
            self._sample_forever(sample, interval), name="eventbus:metrics"
        )
        try:
            await sample()
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _sample_forever(self, sample: Any, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await sample()
            except Exception:  # a broker or database away: keep the last values, try later
                log.warning("sampling the eventbus gauges failed", exc_info=True)

    async def sample(
        self,
        bus: Any,
        *,
        outbox: Any = None,
        engine: Any = None,
        projections: Sequence[Any] = (),
    ) -> None:
        """Take the gauges' values now (``watch`` calls this every interval)."""
        system = self.system or sc.system_of(bus.broker)
        lag = getattr(bus.broker, "lag", None)
        lags, groups = [], set()
        for sub in bus.subscriptions:
            groups.add(sub.group or "")
            value = await lag(sub) if lag is not None else None
            if value is not None:
                labels = {
                    sc.SYSTEM: system,
                    sc.DESTINATION: sub.topic,
                    sc.CONSUMER_GROUP: sub.group,
                }
                lags.append((float(value), labels))
        depths = []
        for group in sorted(groups):
            count = len(await bus.dead_letters.list(group=group, limit=DEPTH_LIMIT))
            depths.append((float(count), {sc.SYSTEM: system, sc.CONSUMER_GROUP: group}))
        self.samples["eventbus.consumer.lag"] = lags
        self.samples["eventbus.dead_letters.depth"] = depths
        if outbox is not None:
            backlog = await outbox.backlog(engine)
            table = {"eventbus.outbox.table": outbox.table.name}
            self.samples["eventbus.outbox.pending"] = [(float(backlog.pending), table)]
            age = backlog.oldest_age or 0.0
            self.samples["eventbus.outbox.oldest_age"] = [(age, table)]
        if projections:
            self.samples["eventbus.projection.lag"] = [
                (float(await r.lag()), {"eventbus.projection": r.projection.name})
                for r in projections
            ]

    def _observer(self, name: str) -> Any:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(value, labels) for value, labels in self.samples.get(name, [])]

        return observe


def _no_measurements(provider: Any) -> bool:
    # The API's stand-in until an SDK is set up has no public class: it is known by name.
    noop = isinstance(provider, metrics.NoOpMeterProvider)
    return noop or type(provider).__name__ == "_ProxyMeterProvider"


_GAUGES = (
    ("eventbus.consumer.lag", "{message}", "Messages of a subscription's group not settled yet."),
    ("eventbus.dead_letters.depth", "{message}", "Dead letters waiting in a group's DLQ."),
    ("eventbus.outbox.pending", "{row}", "Outbox rows committed and not yet published."),
    ("eventbus.outbox.oldest_age", "s", "Age of the oldest unpublished outbox row."),
    ("eventbus.projection.lag", "{event}", "Stored events a projection has not applied yet."),
)


class _PublishSide:
    """The publish half of :class:`Metrics`, bound to one bus."""

    def __init__(self, owner: Metrics, bus: BusView, system: str) -> None:
        self.owner, self.bus, self.system = owner, bus, system

    async def __call__(self, envelope: Envelope, call_next: PublishNext) -> Envelope:
        if staging_session.get() is not None or not self.owner.live():  # staged: counted later
            return await call_next(envelope)
        destination = self.bus.destination_of(envelope)
        return await self._measured(call_next(envelope), 1, {destination})

    async def batch(
        self, messages: Sequence[tuple[str, Envelope]], call_next: PublishBatchNext
    ) -> Sequence[tuple[str, Envelope]]:
        if staging_session.get() is not None or not messages or not self.owner.live():
            return await call_next(messages)
        destinations = {destination for destination, _ in messages}
        return await self._measured(call_next(messages), len(messages), destinations)

    async def _measured(self, sending: Awaitable[T], count: int, destinations: set[str]) -> T:
        """``await sending``, timed, and ``count`` messages counted as sent."""
        attributes = self._attributes(*destinations)
        start = time.perf_counter()
        try:
            return await sending
        except Exception as exc:
            attributes[sc.ERROR_TYPE] = type(exc).__qualname__
            raise
        finally:
            self.owner.operation_duration.record(time.perf_counter() - start, attributes)
            self.owner.sent.add(count, attributes)

    def _attributes(self, *destinations: str) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            sc.SYSTEM: self.system,
            sc.OPERATION_NAME: sc.SEND,
            sc.OPERATION_TYPE: sc.SEND,
        }
        if len(destinations) == 1:
            attributes[sc.DESTINATION] = self.owner.name_of(destinations[0])
        return attributes
