"""``Timeout``: cancel a handler that runs too long and report it as a transient failure.

The handler runs in the caller's task (context variables and tracing flow through); a watchdog
on the clock cancels it through an ``anyio`` cancel scope when ``seconds`` have passed, and
:class:`~eventbus.errors.HandlerTimeout` (a ``TransientError``) is raised in its place, so the
retry policy treats an overrun like any other transient failure.

Put it inside ``Retry`` so that each try is bounded (per subscription:
``@router.subscribe(..., middleware=[Timeout(5)])``, or last in the bus's ``middleware=``).
A plain ``def`` handler runs in a worker thread, which cannot be interrupted: its overrun is
reported when the thread returns.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import anyio

from eventbus.errors import ConfigurationError, HandlerTimeout

if TYPE_CHECKING:
    from eventbus.context import Context, Next
    from eventbus.types import Clock

__all__ = ["Timeout"]


class Timeout:
    """Bound each run of the rest of the chain to ``seconds``; ``clock`` defaults to the bus's."""

    def __init__(self, seconds: float, *, clock: Clock | None = None) -> None:
        if seconds <= 0:
            raise ConfigurationError(f"Timeout needs a positive number of seconds, got {seconds!r}")
        self.seconds = seconds
        self.clock = clock

    async def __call__(self, ctx: Context, call_next: Next) -> None:
        clock = self.clock or ctx.clock
        with anyio.CancelScope() as scope:
            watchdog = asyncio.get_running_loop().create_task(self._expire(clock, scope))
            try:
                await call_next(ctx)
            finally:
                watchdog.cancel()
        await asyncio.gather(watchdog, return_exceptions=True)
        if scope.cancelled_caught:
            raise HandlerTimeout(
                f"{ctx.subscription.name} took longer than {self.seconds:g}s on {ctx.envelope.id} "
                "and was cancelled; make it faster or raise Timeout(seconds=...)"
            )

    async def _expire(self, clock: Clock, scope: anyio.CancelScope) -> None:
        await clock.sleep(self.seconds)
        scope.cancel()

    def __repr__(self) -> str:
        return f"Timeout({self.seconds:g})"
