"""``SagaStep``: what a saga's handler is given, and everything it may ask for.

A handler never writes anything itself. It reads and changes ``step.state`` and says what
should happen — publish these messages, move to that phase, start or cancel a timeout, add a
compensation, complete, fail — and the saga commits all of it in one transaction once the
handler has returned (or none of it, if the handler raised). That is what makes a transition
happen once: a handler that is run again, after a conflict or a crash, decides again from the
state as committed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from eventbus.errors import ConfigurationError
from eventbus.event import Event

__all__ = ["SagaStep"]

S = TypeVar("S", bound=BaseModel)

_UNSET: Any = object()


class SagaStep(Generic[S]):
    """One transition being decided for the instance ``key`` of saga ``saga``.

    ``event`` is the event that caused it (``None`` for a timeout or a compensation),
    ``phase`` the instance's phase before it, ``now`` the saga's clock reading.
    """

    def __init__(
        self,
        *,
        saga: str,
        key: str,
        state: S | None,
        phase: str,
        event: Event | None,
        now: float,
        make_state: Callable[[], S] | None = None,
    ) -> None:
        self.saga, self.key, self.phase, self.event, self.now = saga, key, phase, event, now
        self._state: S = _UNSET if state is None else state
        self._make_state = make_state
        self.messages: list[tuple[Event, str | None]] = []
        """What is published when the transition commits: ``(event, partition key)``."""
        self.timeouts: dict[str, float] = {}
        self.cancelled: set[str] = set()
        self.compensations: list[str] = []
        self.outcome: str | None = None
        self.reason: str | None = None

    # ---------------------------------------------------------------- the state
    @property
    def state(self) -> S:
        """The instance's state; a start handler sets it (``step.state = MyState(...)``)."""
        if self._state is _UNSET:
            if self._make_state is None:
                raise ConfigurationError(
                    f"saga {self.saga!r}: the start handler must set step.state before reading "
                    "it (its state model has required fields)"
                )
            self._state = self._make_state()
        return self._state

    @state.setter
    def state(self, value: S) -> None:
        self._state = value

    @property
    def has_state(self) -> bool:
        return self._state is not _UNSET

    # ---------------------------------------------------------------- what to do
    def publish(self, event: Event, *, key: str | None = None) -> None:
        """Publish ``event`` when the transition commits (through the outbox with the SQL
        store). ``key`` defaults to the instance's key, so that the services it talks to
        and their replies keep the instance's messages in order."""
        if not isinstance(event, Event):
            raise TypeError(f"step.publish takes an eventbus Event, not {type(event).__name__}")
        self.messages.append((event, self.key if key is None else key))

    def goto(self, phase: str) -> None:
        """Move the instance to ``phase`` (a name of your choosing: handlers filter on it)."""
        if not phase or not isinstance(phase, str):
            raise ConfigurationError("a phase is a non-empty name, such as 'awaiting_payment'")
        self.phase = phase

    def timeout(self, name: str, after: float) -> None:
        """Fire the saga's ``on_timeout(name)`` handler ``after`` seconds from now, unless the
        timeout is cancelled first. Durable: it is stored with the transition. Scheduling a
        name again replaces the earlier timeout of that name."""
        if not after >= 0:
            raise ConfigurationError(f"timeout {name!r}: after must be >= 0 seconds")
        self.cancelled.discard(name)
        self.timeouts[name] = float(after)

    def cancel_timeout(self, name: str) -> None:
        """Cancel the timeout ``name`` (nothing happens if there is none)."""
        self.timeouts.pop(name, None)
        self.cancelled.add(name)

    def compensate_with(self, name: str) -> None:
        """Record that the saga's compensation ``name`` undoes what was just done: if the
        saga fails later, it runs (after the ones recorded after it)."""
        self.compensations.append(name)

    def complete(self) -> None:
        """The saga has reached its goal: it ends as ``completed``, its timeouts cancelled."""
        self.outcome, self.reason = "completed", None

    def fail(self, reason: str) -> None:
        """The saga cannot reach its goal: its recorded compensations run, last first."""
        self.outcome, self.reason = "failed", reason

    def __repr__(self) -> str:
        return f"SagaStep(saga={self.saga!r}, key={self.key!r}, phase={self.phase!r})"
