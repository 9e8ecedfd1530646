"""Aggregates: state rebuilt from the events that changed it.

An aggregate's commands check the rules and *record* events; its state changes only by
applying events, through one method per event type::

    class Order(Aggregate):
        status = "new"

        def place(self, items: list[str]) -> None:          # a command
            if self.status != "new":
                raise ValueError(f"order {self.id} is already {self.status}")
            self.record(OrderPlaced(order_id=self.id, items=items))

        @applies(OrderPlaced)
        def _placed(self, event: OrderPlaced) -> None:       # how the event changes the state
            self.status = "placed"

``record`` applies the event at once and keeps it as pending until it is saved;
loading an aggregate applies its stored events in order (:meth:`Aggregate.rehydrate`, or
:meth:`Aggregate.restore` from a snapshot and then :meth:`Aggregate.catch_up`).
``version`` counts the events applied, stored and pending: the version to expect when the
pending events are appended is ``version - len(pending)``.

An aggregate is plain Python: no database, no bus. A repository loads and saves it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar, TypeVar

from eventbus.errors import ConfigurationError
from eventbus.event import Event

__all__ = ["Aggregate", "applies"]

A = TypeVar("A", bound="Aggregate")
_APPLIES = "__eventbus_applies__"


Applier = Callable[[Any, Any], None]


def applies(event: type[Event]) -> Callable[[Applier], Applier]:
    """Mark a method of an :class:`Aggregate` as how ``event`` changes its state."""
    if not (isinstance(event, type) and issubclass(event, Event)):
        raise ConfigurationError(f"@applies takes an Event subclass, got {event!r}")

    def mark(method: Applier) -> Applier:
        setattr(method, _APPLIES, event)
        return method

    return mark


class Aggregate:
    """The base of event-sourced aggregates; see the module documentation.

    ``snapshot_version`` is the version of the aggregate's own state layout: change it when
    the attributes a snapshot holds change, and older snapshots are ignored.
    """

    snapshot_version: ClassVar[int] = 1
    _appliers: ClassVar[dict[str, str]] = {}
    event_classes: ClassVar[dict[str, type[Event]]] = {}
    """The event classes the aggregate applies, by event type (what a repository decodes
    stored events into)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own: dict[str, str] = {}  # event type -> this class's method applying it
        classes: dict[str, type[Event]] = {}
        for name, member in vars(cls).items():
            event = getattr(member, _APPLIES, None)
            if event is None:
                continue
            if event.event_type in own:
                raise ConfigurationError(
                    f"{cls.__name__} applies {event.__name__} twice: in "
                    f"{own[event.event_type]} and {name}"
                )
            own[event.event_type], classes[event.event_type] = name, event
        cls._appliers = {**cls._appliers, **own}  # a subclass's method replaces its parent's
        cls.event_classes = {**cls.event_classes, **classes}

    def __init__(self, id: str) -> None:
        if not id or not isinstance(id, str):
            raise ConfigurationError(f"an aggregate id is a non-empty string, got {id!r}")
        self.id = id
        self.version = 0
        self._pending: list[Event] = []

    # ---------------------------------------------------------------- events
    def record(self, event: Event) -> None:
        """Apply ``event`` now and keep it to be saved (what a command calls)."""
        self._apply(event)
        self._pending.append(event)

    @property
    def pending(self) -> list[Event]:
        """The events recorded since the aggregate was loaded or last saved, in order."""
        return list(self._pending)

    def mark_saved(self) -> None:
        """The pending events were stored (a repository calls this after appending them)."""
        self._pending.clear()

    @classmethod
    def rehydrate(cls: type[A], id: str, events: Iterable[Event]) -> A:
        """The aggregate ``id`` after its stored ``events``, from the start."""
        aggregate = cls(id)
        aggregate.catch_up(events)
        return aggregate

    def catch_up(self, events: Iterable[Event]) -> None:
        """Apply stored events that came after this state (after a snapshot, say); they are
        not pending: they are already saved."""
        for event in events:
            self._apply(event)

    def _apply(self, event: Event) -> None:
        name = self._appliers.get(type(event).event_type)
        if name is None:
            raise ConfigurationError(
                f"{type(self).__name__} has no method for {type(event).__name__} "
                f"({type(event).event_type!r}): mark one with @applies({type(event).__name__})"
            )
        getattr(self, name)(event)
        self.version += 1

    # ---------------------------------------------------------------- snapshots
    def snapshot(self) -> dict[str, Any]:
        """The aggregate's state as JSON-ready values: its public attributes (override it
        for state that is not plain data)."""
        skip = ("id", "version")
        return {k: v for k, v in vars(self).items() if not k.startswith("_") and k not in skip}

    @classmethod
    def restore(cls: type[A], id: str, state: dict[str, Any], version: int) -> A:
        """The aggregate as :meth:`snapshot` saw it at ``version``."""
        aggregate = cls(id)
        for key, value in state.items():
            setattr(aggregate, key, value)
        aggregate.version = version
        return aggregate
