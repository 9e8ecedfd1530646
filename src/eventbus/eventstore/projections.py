"""``Projection``: a read model, and how each stored event changes it.

A projection names itself (the name its checkpoint is kept under) and has one handler per
event type::

    summaries = Projection("order-summaries")

    @summaries.on(OrderPlaced)
    async def placed(event: OrderPlaced, ctx: ProjectionContext) -> None:
        await ctx.session.execute(insert(orders).values(id=event.order_id, total=event.total))

A handler is ``async def`` and takes ``(event)`` or ``(event, ctx)``: ``ctx.record`` is the
:class:`~eventbus.eventstore.StoredEvent` (stream, version, position, envelope) and
``ctx.session`` the transaction the read model is written in — the one the checkpoint commits
with. It never commits or rolls back that session itself: the runner does.

Events of types the projection has no handler for are passed over (the checkpoint moves past
them). An event of a handled type in a ``dataversion`` no handler claims is not passed over: it
goes through the projection's ``upcasters`` to the newest version a handler takes (an
upcaster may split or drop it); without one it is an error, and the projection waits on it
(an upcaster, or a handler for that version, is missing). A
:class:`~eventbus.eventstore.projections.Projection` holds no state and no connection:
:class:`~eventbus.eventstore.ProjectionRunner` runs it.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from eventbus.context import Context, Middleware
from eventbus.errors import ConfigurationError
from eventbus.event import Event
from eventbus.eventstore.records import EventTypes, StoredEvent
from eventbus.router import Router
from eventbus.upcasting import Upcasters

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

__all__ = ["Projection", "ProjectionContext"]

H = TypeVar("H", bound=Callable[..., Awaitable[None]])
R = TypeVar("R", bound=Callable[..., Awaitable[None]])


class ProjectionContext:
    """What a handler gets besides the event: the stored record and the transaction."""

    __slots__ = ("_session", "projection", "record")

    def __init__(self, projection: str, record: StoredEvent, session: Any) -> None:
        self.projection = projection
        """The projection's name."""
        self.record = record
        """The stored event: ``stream_id``, ``version``, ``position``, ``envelope``."""
        self._session = session

    @property
    def session(self) -> AsyncSession:
        """The ``AsyncSession`` whose transaction commits the read model and the checkpoint
        together. Write through it; never commit it."""
        if self._session is None:
            raise ConfigurationError(
                f"projection {self.projection!r} keeps its checkpoint in memory (an event store "
                "without a database): there is no session. Keep the read model in memory too, "
                "or run it on EventStore (SQLite or PostgreSQL)"
            )
        session: AsyncSession = self._session
        return session


@dataclasses.dataclass(frozen=True)
class _Handler:
    event: type[Event]
    func: Callable[..., Awaitable[None]]
    wants_context: bool


class Projection:
    """A named read model and its handlers, one per event type (see the module)."""

    def __init__(self, name: str, *, upcasters: Upcasters | None = None) -> None:
        if not isinstance(name, str) or not name or len(name) > 255:
            raise ConfigurationError(
                f"a projection's name is a non-empty string of at most 255 characters (its "
                f"checkpoint is kept under it), got {name!r:.80}"
            )
        self.name = name
        self.upcasters = upcasters
        """Turn stored events older than a handler's version into it (split or drop too)."""
        self._handlers: dict[tuple[str, int], _Handler] = {}
        self._types = EventTypes()
        self._reset: Callable[..., Awaitable[None]] | None = None
        self._reset_takes_session = False

    def on(self, event: type[Event]) -> Callable[[H], H]:
        """Register the decorated ``async def`` as how ``event`` changes the read model."""
        if not (isinstance(event, type) and issubclass(event, Event)) or event is Event:
            raise ConfigurationError(f"@projection.on takes an Event subclass, got {event!r}")
        key = (event.event_type, event.event_version)

        def register(func: H) -> H:
            wants_context = _parameters(func, "(event) or (event, ctx)", (1, 2)) == 2
            if key in self._handlers:
                raise ConfigurationError(
                    f"projection {self.name!r} handles {event.__name__} ({key[0]!r} version "
                    f"{key[1]}) twice: in {self._handlers[key].func.__qualname__} and "
                    f"{func.__qualname__}"
                )
            self._types.add(event)
            self._handlers[key] = _Handler(event, func, wants_context)
            return func

        return register

    def on_reset(self, func: R) -> R:
        """Register the decorated ``async def (session)`` (or ``()`` for a read model in
        memory) that clears the read model; :meth:`ProjectionRunner.rebuild` runs it in the
        transaction that sets the checkpoint back to the start."""
        self._reset_takes_session = _parameters(func, "(session) or ()", (0, 1)) == 1
        self._reset = func
        return func

    @property
    def event_types(self) -> frozenset[str]:
        """The event types this projection has handlers for."""
        return frozenset(event_type for event_type, _ in self._handlers)

    async def apply(self, record: StoredEvent, session: Any = None) -> bool:
        """Run the handler for ``record`` (in ``session``'s transaction, if any); False when
        the projection does not handle its type."""
        envelope = record.envelope
        handler = self._handlers.get((envelope.type, envelope.dataversion or 1))
        if handler is None:
            if envelope.type in self.event_types:
                return await self._upcast(record, session)
            return False
        event = record.event
        if not isinstance(event, handler.event):
            event = self._types.decode(record.stream_id, record.version, envelope)
        assert event is not None, "a handler's own class decodes its type and version"
        await self._call(handler, event, record, session)
        return True

    async def _upcast(self, record: StoredEvent, session: Any) -> bool:
        """An older event of a handled type: through the upcasters to the newest version a
        handler takes, then that handler once per event it became (none: dropped)."""
        envelope, version = record.envelope, record.envelope.dataversion or 1
        newer = [h for (t, v), h in self._handlers.items() if t == envelope.type and v > version]
        upcasters = self.upcasters
        if not newer or upcasters is None or not upcasters.covers(envelope.type):
            raise ConfigurationError(
                f"projection {self.name!r} handles {envelope.type!r}, but not dataversion "
                f"{version}, which position {record.position} (stream {record.stream_id!r} "
                f"version {record.version}) has: register an upcaster (Projection(..., "
                "upcasters=...)) or a handler for that version. The projection waits on it"
            )
        handler = max(newer, key=lambda h: h.event.event_version)
        for payload in upcasters.payloads(envelope, handler.event.event_version):
            await self._call(handler, handler.event.model_validate(payload), record, session)
        return True

    async def _call(
        self, handler: _Handler, event: Event, record: StoredEvent, session: Any
    ) -> None:
        if handler.wants_context:
            await handler.func(event, ProjectionContext(self.name, record, session))
        else:
            await handler.func(event)

    async def reset(self, session: Any = None) -> None:
        """Clear the read model with the :meth:`on_reset` hook (nothing when there is none)."""
        if self._reset is None:
            return
        if not self._reset_takes_session:
            await self._reset()
            return
        if session is None:
            raise ConfigurationError(
                f"the reset hook of projection {self.name!r} takes a session, but its "
                "checkpoint is kept in memory: there is none; make the hook take no parameter"
            )
        await self._reset(session)

    def subscribe(
        self, router: Router, *, group: str, middleware: Sequence[Middleware] = ()
    ) -> None:
        """Feed the projection from the bus instead of a store: on ``router``, a subscription
        in ``group`` for each event class it handles (with ``middleware``).

        With the ``Inbox`` in ``middleware`` (``Inbox(engine, outbox=...)``), each event is
        applied once, in the inbox's transaction (``ctx.session``), which records it as
        handled in the same commit: a redelivery finds the record and is not applied again.
        ``ctx.record`` then carries the envelope and the event; the bus has no stream
        version or feed position, so its ``stream_id`` is the partition key and its
        ``version`` and ``position`` are 0. Order is the bus's: per partition key.
        """
        for handler in self._handlers.values():
            router.subscribe(handler.event, group=group, middleware=middleware)(
                self._from_bus(handler)
            )

    def _from_bus(self, handler: _Handler) -> Callable[..., Awaitable[None]]:
        async def on_event(event: Event, ctx: Context) -> None:
            envelope = ctx.envelope
            record = StoredEvent(envelope.partitionkey or "", 0, 0, envelope, event)
            await self._call(handler, event, record, ctx.session)

        on_event.__annotations__["event"] = handler.event  # what the router validates into
        on_event.__qualname__ = f"{self.name}:{handler.func.__qualname__}"
        return on_event

    def __repr__(self) -> str:
        return f"Projection({self.name!r}, handles={sorted(self.event_types)})"


def _parameters(func: Callable[..., Any], shape: str, allowed: tuple[int, ...]) -> int:
    """How many positional parameters ``func`` takes, checked once, when it is registered."""
    name = getattr(func, "__qualname__", repr(func))
    if not inspect.iscoroutinefunction(func):
        raise ConfigurationError(
            f"{name} must be an async def: it runs in the projection's transaction"
        )
    signature = inspect.signature(func)
    positional = [
        p
        for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    required = [
        p for p in signature.parameters.values() if p.default is p.empty and p not in positional
    ]
    if len(positional) not in allowed or required:
        raise ConfigurationError(f"{name} must take {shape}; its signature is {signature}")
    return len(positional)
