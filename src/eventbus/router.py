"""Routers, subscriptions, handler signatures and topic patterns.

``@router.subscribe(...)`` accepts an event class, a type name, or a pattern in AMQP topic
syntax over dot-separated type names: ``*`` matches exactly one word, ``#`` zero or more
(``auth.user.*`` matches ``auth.user.created``; ``auth.#`` matches ``auth``, ``auth.login`` and
``auth.user.created``). The handler's signature is resolved once, here, so a handler that
cannot be called fails at import time with :class:`~eventbus.errors.ConfigurationError`.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from eventbus.context import Context, Middleware
from eventbus.envelope import Envelope
from eventbus.errors import ConfigurationError
from eventbus.event import Event
from eventbus.middleware.retry import Retry
from eventbus.topics import is_pattern, topic_matches, validate_type_name

__all__ = ["HandlerSpec", "Router", "Subscription"]

F = TypeVar("F", bound=Callable[..., Any])


@dataclasses.dataclass(frozen=True)
class HandlerSpec:
    """How to call a handler, worked out once from its signature."""

    func: Callable[..., Any]
    model: type[Event] | None
    """The model the payload is validated into; ``None`` means the handler takes the Envelope."""
    wants_context: bool
    is_async: bool

    @property
    def name(self) -> str:
        return f"{self.func.__module__}.{_name_of(self.func)}"


@dataclasses.dataclass(frozen=True)
class Subscription:
    """A handler bound to what it listens to, in which consumer group, with which concurrency.

    ``topic`` is what the broker subscribes to (a destination, or a pattern when
    ``is_pattern``); ``types`` are the event types the handler accepts (``None``: all that
    arrive), so several types can share one destination.
    """

    target: str
    topic: str
    is_pattern: bool
    types: frozenset[str] | None
    group: str | None
    concurrency: int
    handler: HandlerSpec
    middleware: tuple[Middleware, ...] = ()
    retry: Retry | None = None
    """Retry policy for this subscription, in place of the chain's ``Retry`` (or added to it)."""

    @property
    def name(self) -> str:
        return self.handler.name

    @property
    def handler_name(self) -> str:
        name = getattr(self.handler.func, "__name__", None)
        return name if isinstance(name, str) else _name_of(self.handler.func).lower()

    def accepts(self, event_type: str) -> bool:
        if self.types is not None:
            return event_type in self.types
        return not self.is_pattern or topic_matches(self.topic, event_type)


class Router:
    """A group of subscriptions, included into a bus with ``bus.include_router(router)``.

    ``publishes`` declares the event classes this part of the application publishes, so that
    its API document (:func:`eventbus.asyncapi.asyncapi_document`) lists them as ``send``
    operations; publishing does not depend on it.
    """

    def __init__(self, *, publishes: Iterable[type[Event]] = ()) -> None:
        self.subscriptions: list[Subscription] = []
        self.publishes: list[type[Event]] = []
        self._running_buses = 0
        self.declare_publishes(*publishes)

    def declare_publishes(self, *events: type[Event]) -> None:
        """Add event classes to :attr:`publishes` (each once)."""
        for event in events:
            if not (isinstance(event, type) and issubclass(event, Event) and event is not Event):
                raise ConfigurationError(
                    f"publishes= takes Event subclasses (the events this service sends), "
                    f"not {event!r}"
                )
            if event not in self.publishes:
                self.publishes.append(event)

    def _lock(self) -> None:
        """A bus including this router has started: its subscriptions are fixed now."""
        self._running_buses += 1

    def _unlock(self) -> None:
        self._running_buses -= 1

    def subscribe(
        self,
        target: type[Event] | str,
        *,
        group: str | None = None,
        concurrency: int = 1,
        middleware: Sequence[Middleware] = (),
        retry: Retry | None = None,
    ) -> Callable[[F], F]:
        """Register the decorated function as a handler; the function is returned unchanged.

        ``group`` is the consumer group: handlers in one group share the work, each group gets
        every event. It defaults to ``"{service}.{function name}"`` when the router is included
        into a bus. ``concurrency`` is how many events are handled at once; events with the
        same ``partitionkey`` are still handled one after another, in order.
        ``middleware`` runs inside the bus's middleware, for this handler only. ``retry``
        replaces the bus's retry policy for this handler, e.g.
        ``retry=Retry(tries=1, delays=(30, 300))``: it takes the place of the ``Retry`` in the
        chain, or, when the chain has none (``middleware=()``), runs innermost of the bus's
        middleware. Subscribing to a router whose bus is running raises
        :class:`~eventbus.errors.ConfigurationError`.
        """
        if self._running_buses:
            name = getattr(target, "__name__", target)
            raise ConfigurationError(
                f"cannot subscribe to {name!r}: this router is included in a running bus, "
                "which would never deliver to the new handler; subscribe handlers before the "
                "bus starts (before `async with bus`)"
            )
        _check_retry(retry)
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigurationError(f"concurrency must be an integer >= 1, got {concurrency!r}")
        if group is not None and not group.strip():
            raise ConfigurationError("group must be a non-empty string (or None for the default)")

        def decorator(func: F) -> F:
            self.subscriptions.append(
                dataclasses.replace(
                    _make_subscription(target, func, group, concurrency, tuple(middleware)),
                    retry=retry,
                )
            )
            return func

        return decorator


def _check_retry(retry: object) -> None:
    if retry is not None and not isinstance(retry, Retry):
        raise ConfigurationError(
            f"subscribe(retry=...) takes an eventbus.middleware.Retry, not {retry!r}"
        )


def _make_subscription(
    target: type[Event] | str,
    func: Callable[..., Any],
    group: str | None,
    concurrency: int,
    middleware: tuple[Middleware, ...],
) -> Subscription:
    if isinstance(target, type) and issubclass(target, Event):
        model: type[Event] | None = target
        name, topic = target.event_type, target.destination()
        types: frozenset[str] | None = frozenset([name])
    elif isinstance(target, str):
        model, name = None, target.strip()
        words = [w for w in name.split(".") if w not in ("*", "#")]
        if name.split(".") != words:  # a pattern: check its literal words
            validate_type_name(".".join(words) or "x", f"subscription pattern {name!r}; word")
        else:
            validate_type_name(name, "subscription target")
        topic, types = name, (None if is_pattern(name) else frozenset([name]))
    else:
        raise ConfigurationError(
            f"subscribe() takes an Event subclass, a type name or a pattern, not {target!r}"
        )
    spec = resolve_handler(func, model, pattern=is_pattern(name))
    if spec.model is not None and spec.model.event_type != name:
        raise ConfigurationError(
            f"{spec.name} subscribes to {name!r} but takes {spec.model.__name__}, whose event type "
            f"is {spec.model.event_type!r}; subscribe to {spec.model.__name__} instead"
        )
    if spec.model is not None and model is None:
        topic = spec.model.destination()
    return Subscription(name, topic, is_pattern(name), types, group, concurrency, spec, middleware)


def resolve_handler(
    func: Callable[..., Any], model: type[Event] | None, *, pattern: bool = False
) -> HandlerSpec:
    """Work out how to call ``func``: which model (or Envelope) and whether it takes a Context.

    An unannotated first parameter takes ``model``, the class subscribed to; with a type name
    or a pattern there is none, so the parameter must be annotated.
    """
    qualname = f"{getattr(func, '__module__', '?')}.{_name_of(func)}"
    if not callable(func):
        raise ConfigurationError(f"handler {func!r} is not callable")
    if inspect.isasyncgenfunction(func) or inspect.isgeneratorfunction(func):
        raise ConfigurationError(f"handler {qualname} is a generator; handlers return None")
    call = getattr(func, "__call__", func)  # noqa: B004 - a callable object: its method
    target: Any = func if inspect.isroutine(func) else call
    try:
        hints = typing.get_type_hints(target)
    except Exception as exc:  # NameError for unresolvable forward references, and friends
        raise ConfigurationError(
            f"cannot resolve the annotations of handler {qualname}: {exc}; import the types it "
            "names at module level"
        ) from exc
    params = _positional_parameters(func, qualname)
    event_model = _event_model(qualname, hints.get(params[0].name, model), model, pattern)
    wants_context = len(params) >= 2
    if wants_context and hints.get(params[1].name, Context) is not Context:
        raise ConfigurationError(
            f"the second parameter of handler {qualname} must be annotated Context "
            f"(or left out), got {hints.get(params[1].name)!r}"
        )
    is_async = inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(
        getattr(func, "__call__", None)  # noqa: B004 - async callable objects
    )
    return HandlerSpec(func, event_model, wants_context, is_async)


def _positional_parameters(func: Callable[..., Any], qualname: str) -> list[inspect.Parameter]:
    """The event and (optionally) ctx parameters; anything else must have a default."""
    signature = inspect.signature(func)
    params = [
        p
        for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    keyword_only = [
        p.name
        for p in signature.parameters.values()
        if p.kind is p.KEYWORD_ONLY and p.default is p.empty
    ]
    required_extra = [p.name for p in params[2:] if p.default is p.empty]
    if not params or required_extra or keyword_only:
        raise ConfigurationError(
            f"handler {qualname} must take (event) or (event, ctx: Context) as positional "
            f"parameters; its signature is {signature}"
            + (f" (keyword-only: {', '.join(keyword_only)})" if keyword_only else "")
        )
    return params


def _event_model(
    qualname: str, first: Any, model: type[Event] | None, pattern: bool
) -> type[Event] | None:
    """The model the payload is validated into, from the first parameter's annotation."""
    if isinstance(first, type) and model is not None and issubclass(model, first):
        first = model  # a handler for a base model, subscribed to one concrete subclass
    if first is Envelope:
        return None
    if isinstance(first, type) and issubclass(first, Event) and first is not Event:
        if pattern:
            raise ConfigurationError(
                f"handler {qualname} subscribes to a pattern, which delivers several event types;"
                f" take `envelope: Envelope` as its first parameter instead of {first.__name__}"
            )
        return first
    raise ConfigurationError(
        f"annotate the first parameter of handler {qualname} with the event model it handles "
        f"(an Event subclass) or with Envelope (it may be left unannotated only when "
        f"subscribing to an Event class); got {first!r}"
    )


def _name_of(func: Callable[..., Any]) -> str:
    """A handler's name: a function's qualified name, or a callable object's class."""
    name = getattr(func, "__qualname__", None)
    return name if isinstance(name, str) else type(func).__qualname__
