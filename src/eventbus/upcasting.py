"""Upcasting: older payloads of an event turned into the current version before validation.

An event's schema changes; events already sent (waiting in a queue, a retry topic or a
dead-letter queue) keep the version they were written with, in their ``dataversion``.
An *upcaster* turns a payload of one version of one event type into the next version::

    upcasters = Upcasters()

    @upcasters.register(OrderPlaced, from_version=1)
    def split_name(data: dict[str, Any]) -> dict[str, Any]:
        first, _, last = data.pop("customer").partition(" ")
        return {**data, "first_name": first, "last_name": last}

    bus = EventBus(url, upcasters=upcasters)

* Upcasters chain: a version 1 payload for a version 3 model goes through the 1 → 2 and the
  2 → 3 upcaster, in that order.
* A step with no upcaster passes the payload on unchanged: a compatible change (a field
  added with a default) needs none.
* An upcaster returns the new payload, a list of payloads (the event is split into several,
  each going through the rest of the chain), or ``None`` (the event is dropped: there is
  nothing left to handle).
* Payloads are the JSON data as Python values (a ``dict`` for an object); the result is
  validated into the handler's model as any payload is. A payload newer than the model is
  validated as it is.
* An upcaster that raises makes the event a permanent failure (``PayloadValidationError``):
  retrying cannot change the payload, so it goes to the dead-letter queue with the reason.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from eventbus.envelope import Envelope
from eventbus.errors import ConfigurationError, PayloadValidationError
from eventbus.event import Event

__all__ = ["Upcast", "Upcasters"]

Upcast = Callable[[Any], Any]
"""An upcaster: a payload of one version to the next (one payload, a list of them, or None)."""
F = TypeVar("F", bound=Upcast)


class Upcasters:
    """The upcasters of an application, by event type and the version they upcast from."""

    def __init__(self) -> None:
        self._steps: dict[tuple[str, int], Upcast] = {}
        self._types: set[str] = set()

    def register(self, event: type[Event] | str, *, from_version: int) -> Callable[[F], F]:
        """Decorator: ``func`` turns ``event``'s payloads of ``from_version`` into the next."""

        def decorate(func: F) -> F:
            self.add(event, from_version, func)
            return func

        return decorate

    def add(self, event: type[Event] | str, from_version: int, func: Upcast) -> None:
        """Register ``func`` for ``event`` (a class or its type name) from ``from_version``."""
        event_type = event if isinstance(event, str) else event.event_type
        if isinstance(from_version, bool) or not isinstance(from_version, int) or from_version < 1:
            raise ConfigurationError(
                f"from_version must be a positive integer, got {from_version!r}"
            )
        if (event_type, from_version) in self._steps:
            raise ConfigurationError(
                f"{event_type!r} already has an upcaster from version {from_version}: "
                "give each version step one upcaster"
            )
        if not isinstance(event, str) and from_version >= event.event_version:
            raise ConfigurationError(
                f"an upcaster of {event.__name__} from version {from_version} has nothing to "
                f"upcast to: the model is version {event.event_version}"
            )
        self._steps[(event_type, from_version)] = func
        self._types.add(event_type)

    def steps(self, event_types: Iterable[str]) -> list[str]:
        """The registered steps of ``event_types``, as ``type@version:function`` names (what
        a snapshot records: another set of upcasters means another state)."""
        wanted = set(event_types)
        return sorted(
            f"{event_type}@{version}:{getattr(func, '__qualname__', repr(func))}"
            for (event_type, version), func in self._steps.items()
            if event_type in wanted
        )

    def covers(self, event_type: str) -> bool:
        """Whether any upcaster is registered for ``event_type``."""
        return event_type in self._types

    def upcast(self, event_type: str, version: int, payload: Any, to_version: int) -> list[Any]:
        """``payload`` of ``version`` as the payloads of ``to_version`` it becomes."""
        payloads = [payload]
        for step in range(version, to_version):
            func = self._steps.get((event_type, step))
            if func is None:
                continue  # a compatible change: nothing to do at this step
            payloads = [out for p in payloads for out in _results(func(p))]
        return payloads

    def payloads(self, envelope: Envelope, to_version: int) -> list[Any]:
        """What ``envelope``'s data becomes at ``to_version``; an upcaster that fails, or data
        that is not JSON, raises :class:`~eventbus.errors.PayloadValidationError`."""
        version = envelope.dataversion or 1
        try:
            payload = json.loads(envelope.data) if envelope.data else None
            return self.upcast(envelope.type, version, payload, to_version)
        except Exception as exc:
            raise PayloadValidationError(
                f"event {envelope.id} of type {envelope.type!r} could not be upcast from "
                f"version {version} to {to_version}: {type(exc).__name__}: {exc}"
            ) from exc


def _results(out: Any) -> Sequence[Any]:
    if out is None:
        return ()
    if isinstance(out, (list, tuple)):
        return out
    return (out,)
