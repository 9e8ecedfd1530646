"""Given / when / then for aggregates: a command's events checked without a store or a bus.

::

    given(Order, [OrderPlaced(order_id="o-1", items=["book"])]).when(
        lambda order: order.ship(carrier="post")
    ).then(OrderShipped(order_id="o-1", carrier="post"))

    given(Order).when(lambda order: order.ship(carrier="post")).then_raises(
        ValueError, match="not placed"
    )

``given`` rebuilds the aggregate from past events (none: a new one); ``when`` runs one
command on it; ``then`` asserts the events it recorded, in order, and returns the
aggregate for more checks of its state; ``then_raises`` asserts the command refused.

Commands that need the time take it as an argument (an aggregate reads no clock). A command
given to ``when`` with two parameters also gets the scenario's clock, a
:class:`~eventbus.clock.FakeClock` (``given(..., clock=...)`` to start it elsewhere)::

    given(Card, [CardIssued(...)]).when(lambda card, clock: card.expire(now=clock.now()))
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from eventbus.aggregate import Aggregate
from eventbus.clock import FakeClock
from eventbus.event import Event

__all__ = ["Outcome", "Scenario", "given"]

A = TypeVar("A", bound=Aggregate)


def given(
    cls: type[A],
    events: Iterable[Event] = (),
    *,
    id: str = "test-1",
    clock: FakeClock | None = None,
) -> Scenario[A]:
    """The aggregate ``cls`` with ``id`` after ``events``."""
    return Scenario(cls.rehydrate(id, events), clock if clock is not None else FakeClock())


class Scenario(Generic[A]):
    def __init__(self, aggregate: A, clock: FakeClock) -> None:
        self.aggregate, self.clock = aggregate, clock

    def when(self, command: Callable[..., Any]) -> Outcome[A]:
        """Run ``command`` on the aggregate (and the clock, if it takes two parameters);
        what it raises is kept for ``then_raises``."""
        before = len(self.aggregate.pending)
        takes_clock = len(inspect.signature(command).parameters) == 2
        try:
            command(self.aggregate, self.clock) if takes_clock else command(self.aggregate)
        except Exception as exc:
            return Outcome(self.aggregate, self.aggregate.pending[before:], exc)
        return Outcome(self.aggregate, self.aggregate.pending[before:], None)


class Outcome(Generic[A]):
    def __init__(self, aggregate: A, recorded: list[Event], error: Exception | None) -> None:
        self.aggregate, self.recorded, self.error = aggregate, recorded, error

    def then(self, *expected: Event) -> A:
        """Assert the command recorded exactly ``expected`` (none: it recorded nothing)."""
        if self.error is not None:
            raise AssertionError(
                f"the command raised {type(self.error).__name__}: {self.error}"
            ) from self.error
        assert self.recorded == list(expected), (
            f"recorded {_names(self.recorded)}, expected {_names(expected)}:\n"
            f"  recorded: {self.recorded!r}\n  expected: {list(expected)!r}"
        )
        return self.aggregate

    def then_raises(self, error: type[Exception], *, match: str | None = None) -> Exception:
        """Assert the command raised ``error`` (its message matching ``match``) and recorded
        nothing."""
        if self.error is None:
            raise AssertionError(f"the command raised nothing; it recorded {_names(self.recorded)}")
        if not isinstance(self.error, error):
            raise AssertionError(
                f"the command raised {type(self.error).__name__}, not {error.__name__}: "
                f"{self.error}"
            ) from self.error
        if match is not None and not re.search(match, str(self.error)):
            raise AssertionError(f"{str(self.error)!r} does not match {match!r}")
        if self.recorded:  # a command that refuses must leave the aggregate as it was
            raise AssertionError(
                f"the command raised, but only after recording {_names(self.recorded)}"
            )
        return self.error


def _names(events: Iterable[Event]) -> str:
    return "[" + ", ".join(type(e).__name__ for e in events) + "]" if events else "nothing"
