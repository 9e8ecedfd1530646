"""``await bus.health()``: is each subscription connected and running, how far behind is it.

A health check must answer while the broker is down — that is when it matters — so nothing
here raises for a broker that cannot be reached: its subscriptions report
``connected=False`` and an unknown ``lag``. Each subscription's broker round trip (the
adapter's optional ``lag(subscription)``, see :class:`eventbus.types.Broker`) is bounded by
``timeout`` and all of them run at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from eventbus.dispatch import SubscriptionRunner
from eventbus.errors import BrokerUnavailable, BusNotStarted
from eventbus.types import SubscriptionView

__all__ = ["Health", "SubscriptionHealth", "check"]

log = logging.getLogger("eventbus")

Lag = Callable[[SubscriptionView], Awaitable["int | None"]]


@dataclasses.dataclass(frozen=True)
class SubscriptionHealth:
    """One subscription of a running bus, as :meth:`EventBus.health` found it."""

    name: str
    """The handler's qualified name."""
    group: str
    destination: str
    """The destination (or pattern) it subscribes to."""
    connected: bool
    """The broker answered for this subscription (an adapter that cannot be asked is taken
    as connected while the bus runs)."""
    running: bool
    """Its fetch loop is alive. It survives broker outages by resubscribing, so False means
    the subscription has stopped for good: the process needs a restart."""
    last_delivery_at: float | None
    """Unix time (``time.time()``) of its latest delivery in this process; None before one."""
    lag: int | None
    """Messages for its group not settled yet, where the adapter can tell (None otherwise);
    what each broker counts is in ``docs/observability.md``."""

    @property
    def ready(self) -> bool:
        return self.connected and self.running


@dataclasses.dataclass(frozen=True)
class Health:
    """What :meth:`EventBus.health` returns; ``dataclasses.asdict`` makes it JSON-ready."""

    started: bool
    """The bus has started and not stopped."""
    subscriptions: tuple[SubscriptionHealth, ...]
    """One per subscription while the bus runs; empty before it starts and after it stops."""

    @property
    def live(self) -> bool:
        """No subscription has stopped for good: False is a reason to restart the process
        (a liveness probe). A broker outage alone never makes it False."""
        return all(sub.running for sub in self.subscriptions)

    @property
    def ready(self) -> bool:
        """Started, and every subscription running and connected (a readiness probe)."""
        return self.started and all(sub.ready for sub in self.subscriptions)


async def check(
    broker: Any, started: bool, runners: Sequence[SubscriptionRunner], timeout: float
) -> Health:
    """The health of ``runners`` on ``broker``, every broker round trip within ``timeout``."""
    lag: Lag | None = getattr(broker, "lag", None)
    found = await asyncio.gather(*(_subscription(runner, lag, timeout) for runner in runners))
    return Health(started=started, subscriptions=tuple(found))


async def _subscription(
    runner: SubscriptionRunner, lag: Lag | None, timeout: float
) -> SubscriptionHealth:
    sub = runner.subscription
    connected, behind = (True, None) if lag is None else await _lag(lag, sub, timeout)
    return SubscriptionHealth(
        name=sub.name,
        group=sub.group or "",
        destination=sub.topic,
        connected=connected,
        running=runner.running,
        last_delivery_at=runner.last_delivery_at,
        lag=behind,
    )


async def _lag(lag: Lag, sub: SubscriptionView, timeout: float) -> tuple[bool, int | None]:
    """(connected, lag): the broker's answer, or (False, None) when it gave none in time."""
    try:
        return True, await asyncio.wait_for(lag(sub), timeout)
    except (BrokerUnavailable, BusNotStarted, asyncio.TimeoutError) as exc:
        log.debug("health: no answer from the broker for %s: %r", sub.name, exc)
    except Exception:  # a failure of the adapter's own: reported, never raised to the probe
        log.warning("health: reading the lag of %s failed", sub.name, exc_info=True)
    return False, None
