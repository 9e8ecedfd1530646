"""A subscription's chain: the bus's middleware, then the subscription's, around the handler.

Built once per subscription when the bus starts (:func:`build_chain`); the consume policy
(:mod:`eventbus.consume`) runs it for every delivery and settles by its outcome.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any

from eventbus.context import Context, Middleware, Next
from eventbus.invoker import handler_invoker
from eventbus.middleware.retry import Retry
from eventbus.router import Subscription
from eventbus.types import UndecodableObserver
from eventbus.upcasting import Upcasters

__all__ = ["RetryFirst", "build_chain", "undecodable_observers"]


def undecodable_observers(
    sub: Subscription, bus_middleware: Sequence[Middleware]
) -> list[UndecodableObserver]:
    """The middleware of ``sub``'s chain that want to hear of undecodable messages."""
    return [m for m in (*bus_middleware, *sub.middleware) if isinstance(m, UndecodableObserver)]


def build_chain(
    sub: Subscription, bus_middleware: Sequence[Middleware], upcasters: Upcasters | None = None
) -> Next:
    """The bus's middleware, then the subscription's, around the handler (first = outermost).

    A subscription's ``retry=`` takes the place of every ``Retry`` in that chain; when there is
    none (``middleware=()``, or a chain without one) it runs innermost of the bus's middleware,
    so ``retry=`` always applies.
    """
    middleware: list[Any] = [*bus_middleware, *sub.middleware]
    if sub.retry is not None:
        replaced = [sub.retry if isinstance(m, Retry) else m for m in middleware]
        if replaced == middleware:
            replaced.insert(len(bus_middleware), sub.retry)
        middleware = replaced
    chain: Next = handler_invoker(sub, upcasters)
    for layer in reversed(middleware[1:]):
        chain = _bind(layer, chain)
    if not middleware:
        return chain
    outermost = middleware[0]
    return RetryFirst(outermost, chain) if type(outermost) is Retry else _bind(outermost, chain)


class RetryFirst:
    """A chain whose outermost link is a ``Retry`` (the default chain, and any chain built on
    it): called, it runs ``retry(ctx, inner)`` like any other link. The consume policy
    (:class:`~eventbus.consume.SubscriptionHandler`) runs it without that link: the first try
    of ``inner`` in its own coroutine and, only if that try failed, the rest of the tries
    (:meth:`Retry.after_first_try`). The same tries, in the same order and the same task, and
    no coroutine of ``Retry``'s for the common case, a first try that succeeds."""

    __slots__ = ("inner", "retry")

    def __init__(self, retry: Retry, inner: Next) -> None:
        self.retry, self.inner = retry, inner

    def __call__(self, ctx: Context) -> Awaitable[None]:
        return self.retry(ctx, self.inner)


def _bind(middleware: Any, call_next: Any) -> Any:
    """``middleware`` with its ``call_next`` filled in (cheaper to call than a partial)."""

    def layer(arg: Any) -> Any:
        return middleware(arg, call_next)

    return layer
