"""``SagaDefinition``: a saga's declaration — its state model, key, handlers and compensations.

It holds what the user wrote and checks it at import time; it runs nothing. The engine
(:mod:`eventbus.sagas.engine`) applies it to stored instances.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from eventbus.errors import ConfigurationError, PermanentError
from eventbus.event import Event
from eventbus.sagas.records import SagaStore
from eventbus.topics import validate_type_name
from eventbus.types import Clock
from eventbus.upcasting import Upcasters

__all__ = ["FINAL", "Handler", "SagaDefinition", "WallClock"]

S = TypeVar("S", bound=BaseModel)
F = TypeVar("F", bound=Callable[..., Any])

FINAL = "(on_compensated)"
"""The name the ``on_compensated`` hook runs under, below every compensation."""
MISSING_OUTCOMES = ("ignore", "dead_letter")


class WallClock:
    """Seconds since the epoch and ``asyncio.sleep``: timers stay due across restarts."""

    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


@dataclasses.dataclass(frozen=True)
class Handler:
    """A handler of one event type, in some phases (``None``: any), with its key function."""

    func: Callable[..., Any]
    model: type[Event]
    when: frozenset[str] | None
    key: Callable[[Event], str]


class SagaDefinition(Generic[S]):
    """See :class:`eventbus.sagas.Saga`, which adds running it to this declaration."""

    def __init__(
        self,
        name: str,
        state: type[S],
        *,
        key: str | Callable[[Any], str],
        store: SagaStore | None = None,
        clock: Clock | None = None,
        on_missing: str = "ignore",
        compensation_retries: Sequence[float] = (1.0, 10.0, 60.0),
        concurrency: int = 1,
        upcasters: Upcasters | None = None,
        state_version: int = 1,
    ) -> None:
        validate_type_name(name, "saga name")
        if not (isinstance(state, type) and issubclass(state, BaseModel)):
            raise ConfigurationError(f"saga {name!r}: state must be a pydantic model class")
        if on_missing not in MISSING_OUTCOMES:
            raise ConfigurationError(
                f"saga {name!r}: on_missing must be 'ignore' (log and drop the event) or "
                f"'dead_letter', not {on_missing!r}"
            )
        if any(not d >= 0 for d in compensation_retries):
            raise ConfigurationError(f"saga {name!r}: compensation_retries must be >= 0 seconds")
        self.name, self.state_model = name, state
        self.key = _key_function(key)
        self.store = store
        """Where instances live; ``None`` until set (``MemorySagaStore`` or ``SqlSagaStore``)."""
        self.clock: Clock = clock or WallClock()
        """The time timers are due on (wall-clock by default; a ``FakeClock`` in tests)."""
        self.on_missing = on_missing
        self.compensation_retries = tuple(float(d) for d in compensation_retries)
        self.concurrency = concurrency
        self.upcasters, self.state_version = upcasters, state_version
        self.starts_on: dict[str, Handler] = {}
        self.handlers: dict[str, list[Handler]] = {}
        self.timeout_handlers: dict[str, Callable[..., Any]] = {}
        self.compensations: dict[str, Callable[..., Any]] = {}
        self.final: Callable[..., Any] | None = None

    # ---------------------------------------------------------------- declaring
    def starts(
        self, event: type[Event], *, key: str | Callable[[Any], str] | None = None
    ) -> Callable[[F], F]:
        """Decorator: ``handler(event, step)`` creates an instance when ``event`` arrives.

        It sets ``step.state``. A start event for an instance that exists is a no-op."""

        def decorate(func: F) -> F:
            self._check_free(event)
            self.starts_on[event.event_type] = Handler(func, event, None, self._key(key))
            return func

        return decorate

    def on(
        self,
        event: type[Event],
        *,
        when: str | Iterable[str] | None = None,
        key: str | Callable[[Any], str] | None = None,
    ) -> Callable[[F], F]:
        """Decorator: ``handler(event, step)`` runs when ``event`` arrives for an instance in
        one of the phases ``when`` (any phase when left out)."""
        phases = None if when is None else frozenset([when] if isinstance(when, str) else when)

        def decorate(func: F) -> F:
            if event.event_type in self.starts_on:
                raise ConfigurationError(f"saga {self.name!r} starts on {event.__name__}")
            self.handlers.setdefault(event.event_type, []).append(
                Handler(func, event, phases, self._key(key))
            )
            return func

        return decorate

    def on_timeout(self, name: str) -> Callable[[F], F]:
        """Decorator: ``handler(step)`` runs when the timeout ``name`` fires. Without one, a
        timeout that fires fails the saga (its compensations run)."""

        def decorate(func: F) -> F:
            self.timeout_handlers[name] = func
            return func

        return decorate

    def compensation(self, name: str) -> Callable[[F], F]:
        """Decorator: ``handler(step)`` undoes what ``step.compensate_with(name)`` recorded."""

        def decorate(func: F) -> F:
            if name in self.compensations or name == FINAL:
                raise ConfigurationError(f"saga {self.name!r} has a compensation {name!r}")
            self.compensations[name] = func
            return func

        return decorate

    def on_compensated(self, func: F) -> F:
        """Decorator: ``handler(step)`` runs once every compensation has (e.g. to cancel the
        order); it is retried like a compensation."""
        self.final = func
        return func

    # ---------------------------------------------------------------- helpers
    @property
    def event_types(self) -> list[type[Event]]:
        models = {h.model for h in self.starts_on.values()}
        models |= {h.model for handlers in self.handlers.values() for h in handlers}
        return sorted(models, key=lambda m: m.event_type)

    def new_state(self) -> S | None:
        """The state model with its defaults, if it has no required field."""
        try:
            return self.state_model()
        except Exception:
            return None

    def _key(self, key: str | Callable[[Any], str] | None) -> Callable[[Event], str]:
        return self.key if key is None else _key_function(key)

    def _check_free(self, event: type[Event]) -> None:
        if event.event_type in self.starts_on or event.event_type in self.handlers:
            raise ConfigurationError(
                f"saga {self.name!r} handles {event.__name__} already: it either starts the "
                "saga or moves an instance on, not both"
            )


def _key_function(key: str | Callable[[Any], str]) -> Callable[[Event], str]:
    """The correlation key of an event: a field name, or a function of the event."""
    if callable(key):
        return key
    if not isinstance(key, str) or not key:
        raise ConfigurationError("key is a field name (such as 'order_id') or a function")

    def read(event: Event) -> str:
        value = getattr(event, key, None)
        if value is None or value == "":
            raise PermanentError(
                f"{type(event).__name__} has no {key!r} to find its saga instance by: the "
                "event cannot be correlated (give the saga's handler key= for this event)"
            )
        return str(value)

    return read
