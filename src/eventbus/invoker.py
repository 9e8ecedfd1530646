"""The innermost link of every subscription's chain: the payload validated, the handler called.

A handler's signature is resolved once, when it is subscribed (:mod:`eventbus.router`); the
invoker built from it here looks nothing up per delivery. A plain ``def`` handler runs in a
worker thread.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import anyio.to_thread
from pydantic import ValidationError
from pydantic_core import to_json

from eventbus.context import Context, Next
from eventbus.errors import PayloadValidationError
from eventbus.event import Event
from eventbus.router import Subscription
from eventbus.upcasting import Upcasters

__all__ = ["handler_invoker"]


def handler_invoker(sub: Subscription, upcasters: Upcasters | None = None) -> Next:
    """The innermost link of the chain: validate the payload into the handler's model, call it.

    Built once per subscription, so the per-delivery path looks nothing up. With
    ``upcasters`` that cover the handler's event type, a payload older than the model is
    upcast first (:func:`_upcasting`); other subscriptions pay nothing for it.
    """
    invoke = _invoker(sub)
    model = sub.handler.model
    if model is None or upcasters is None or not upcasters.covers(model.event_type):
        return invoke
    return _upcasting(invoke, model, upcasters)


def _upcasting(invoke: Next, model: type[Event], upcasters: Upcasters) -> Next:
    """``invoke`` once for each payload an older event becomes at the model's version, with
    ``ctx.envelope`` carrying that payload and version (the handler, and a handler that
    takes the raw envelope, see the upcast event); none when an upcaster dropped it."""
    current = model.event_version

    async def upcasting(ctx: Context) -> None:
        original = ctx.envelope
        if (original.dataversion or 1) >= current:
            await invoke(ctx)
            return
        try:
            for payload in upcasters.payloads(original, current):
                ctx.envelope = original.replace(data=to_json(payload), dataversion=current)
                await invoke(ctx)
        finally:
            ctx.envelope = original

    return upcasting


def _invoker(sub: Subscription) -> Next:
    spec = sub.handler
    func, model, wants_context = spec.func, spec.model, spec.wants_context
    argument = _envelope if model is None else _validator(model)
    if not spec.is_async:
        return _in_thread(func, argument, wants_context)
    # The handler's own coroutine is returned for the caller to await: no coroutine of ours
    # around it (a payload that does not validate raises as the link is called).
    if wants_context:

        def with_context(ctx: Context) -> Awaitable[None]:
            return func(argument(ctx), ctx)  # type: ignore[no-any-return]

        return with_context
    if model is None:

        def raw(ctx: Context) -> Awaitable[None]:
            return func(ctx.envelope)  # type: ignore[no-any-return]

        return raw

    # The common handler, ``async def handle(event: Model)``: validated and called in one
    # link. The model's own validator is called directly (``model_validate_json`` is a
    # Python wrapper around it that this path would pay for on every delivery); it is looked
    # up on each call, so a model completed after subscribing is validated by its final schema.
    def plain(ctx: Context) -> Awaitable[None]:
        try:
            ctx.event = event = model.__pydantic_validator__.validate_json(ctx.envelope.data)
        except ValidationError as exc:
            raise _mismatch(ctx, model, exc) from exc
        return func(event)  # type: ignore[no-any-return]

    return plain


def _envelope(ctx: Context) -> Any:
    """The link's argument for a handler that takes the envelope itself."""
    return ctx.envelope


def _validator(model: type[Event]) -> Callable[[Context], Any]:
    """The link's argument: the payload validated into ``model`` (and kept as ``ctx.event``)."""

    def argument(ctx: Context) -> Any:
        try:
            ctx.event = event = model.__pydantic_validator__.validate_json(ctx.envelope.data)
        except ValidationError as exc:
            raise _mismatch(ctx, model, exc) from exc
        return event

    return argument


def _mismatch(ctx: Context, model: type[Event], exc: ValidationError) -> PayloadValidationError:
    return PayloadValidationError(
        f"event {ctx.envelope.id} of type {ctx.envelope.type!r} does not match "
        f"{model.__name__}: {exc}"
    )


def _in_thread(
    func: Callable[..., Any], argument: Callable[[Context], Any], wants_context: bool
) -> Next:
    async def in_thread(ctx: Context) -> None:
        args = (argument(ctx), ctx) if wants_context else (argument(ctx),)
        await anyio.to_thread.run_sync(functools.partial(func, *args))

    return in_thread
