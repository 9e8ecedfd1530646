"""The bus in a FastAPI (or Starlette) application: its lifespan, and dependencies.

* :func:`lifespan` starts the bus (and anything else given, such as an ``OutboxRelay``) when
  the application starts and stops it when it stops, around the application's own lifespan;
* :func:`get_bus` is the dependency that gives the running bus;
* :class:`Transaction` is the dependency that gives the request's database session, in a
  transaction that commits when the endpoint returns (before the response is sent) and rolls
  back when it raises; :attr:`Transaction.publisher` gives an :class:`OutboxPublisher` whose
  events are staged in that same transaction, so they are published once, and only if, the
  endpoint's own writes commit.

Every dependency is a plain callable, so ``app.dependency_overrides[get_bus] = ...`` and
``app.dependency_overrides[transaction] = ...`` replace them in tests.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import Depends, Request

from eventbus.bus import EventBus
from eventbus.envelope import Envelope
from eventbus.errors import ConfigurationError
from eventbus.event import Event
from eventbus.fastapi.idempotency import SESSION_STATE_KEY, RequestTransaction

__all__ = ["BUS_STATE_KEY", "OutboxPublisher", "Transaction", "get_bus", "lifespan"]

BUS_STATE_KEY = "eventbus"
"""The attribute of ``app.state`` that holds the bus while the application runs."""

AppLifespan = Callable[[Any], AbstractAsyncContextManager[Mapping[str, Any] | None]]


def lifespan(
    bus: EventBus,
    app_lifespan: AppLifespan | None = None,
    *,
    services: Iterable[AbstractAsyncContextManager[Any]] = (),
) -> Callable[[Any], AbstractAsyncContextManager[Mapping[str, Any]]]:
    """A lifespan for ``FastAPI(lifespan=...)``: the bus runs while the application does.

    Start-up: the bus starts, then each of ``services`` is entered (an ``OutboxRelay``, say),
    then ``app_lifespan`` — the application's own, which may already publish. Shut-down runs
    backwards, so the bus stops last, after it has drained its handlers. The state
    ``app_lifespan`` yields is passed on, with the bus added as ``"eventbus"``.
    """
    extra = list(services)

    @contextlib.asynccontextmanager
    async def run(app: Any) -> AsyncIterator[Mapping[str, Any]]:
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(bus)
            for service in extra:
                await stack.enter_async_context(service)
            setattr(app.state, BUS_STATE_KEY, bus)
            stack.callback(delattr, app.state, BUS_STATE_KEY)
            own: Mapping[str, Any] | None = None
            if app_lifespan is not None:
                own = await stack.enter_async_context(app_lifespan(app))
            yield {**(own or {}), BUS_STATE_KEY: bus}

    return run


def get_bus(request: Request) -> EventBus:
    """The dependency giving the application's running bus (see :func:`lifespan`)."""
    bus = getattr(request.app.state, BUS_STATE_KEY, None)
    if not isinstance(bus, EventBus):
        raise ConfigurationError(
            "no running bus on this application: create it with "
            "FastAPI(lifespan=eventbus.fastapi.lifespan(bus)), or override get_bus in "
            "app.dependency_overrides"
        )
    return bus


class OutboxPublisher:
    """``bus.publish`` bound to one transaction: every event is staged in the outbox."""

    def __init__(self, bus: EventBus, session: Any) -> None:
        self.bus = bus
        self.session = session

    async def publish(self, event: Event, **options: Any) -> Envelope:
        """Stage ``event`` in the request's transaction; options as for ``bus.publish``."""
        return await self.bus.publish(event, session=self.session, **options)

    async def publish_many(
        self, events: Iterable[Event | tuple[Event, str | None]], **options: Any
    ) -> list[Envelope]:
        """Stage several events in the request's transaction (see ``bus.publish_many``)."""
        return await self.bus.publish_many(events, session=self.session, **options)


class Transaction:
    """The request's database session, in a transaction around the endpoint.

    ``sessionmaker`` is an ``async_sessionmaker`` (or any callable returning an
    ``AsyncSession``). Use it as ``Annotated[AsyncSession, transaction.depends]``: the session
    commits when the endpoint returns, before the response goes out (so a failed commit is an
    error response, never a success whose writes are lost), and rolls back when it raises.
    Under :class:`~eventbus.fastapi.IdempotencyKeyMiddleware` with a ``sessionmaker``, the
    request's session is the middleware's, which commits it together with the stored response.
    """

    def __init__(self, sessionmaker: Callable[[], Any]) -> None:
        if not callable(sessionmaker):
            raise ConfigurationError(
                "Transaction takes an async_sessionmaker(engine), not " + repr(sessionmaker)
            )
        self.sessionmaker = sessionmaker
        self.depends: Any = Depends(self, scope="function")
        """``Depends(transaction)`` ending when the endpoint does, before the response."""
        self.publisher = self._publisher_dependency()
        """A dependency giving an :class:`OutboxPublisher` on this request's session."""

    async def __call__(self, request: Request) -> AsyncIterator[Any]:
        shared = request.scope.get("state", {}).get(SESSION_STATE_KEY)
        if isinstance(shared, RequestTransaction):  # the Idempotency-Key middleware's
            try:
                yield shared.session
            except BaseException:
                shared.failed = True  # the middleware rolls it back and stores nothing
                raise
            return
        async with self.sessionmaker() as session, session.begin():
            yield session

    def _publisher_dependency(self) -> Callable[..., OutboxPublisher]:
        depends = self.depends

        def outbox_publisher(
            bus: EventBus = Depends(get_bus),  # noqa: B008 - FastAPI's dependency syntax
            session: Any = depends,
        ) -> OutboxPublisher:
            return OutboxPublisher(bus, session)

        return outbox_publisher
