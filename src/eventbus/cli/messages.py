"""``eventbus publish`` and ``eventbus tail``: put one event on the broker, watch them arrive."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from eventbus.bus import EventBus
from eventbus.cli.common import broker_options, describe, open_bus, run
from eventbus.cli.signals import on_signals
from eventbus.envelope import Envelope, new_envelope, to_structured, validate_extension_name
from eventbus.errors import EventBusError
from eventbus.publishing import new_event_id
from eventbus.router import Router, Subscription
from eventbus.topics import validate_type_name

__all__ = ["publish", "tail"]


def _headers(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for item in values:
        name, equals, value = item.partition("=")
        try:
            headers[validate_extension_name(name)] = value
        except ValueError as exc:
            raise click.BadParameter(str(exc), ctx, param) from None
        if not equals:
            raise click.BadParameter(f"{item!r} is not NAME=VALUE", ctx, param)
    return headers


@click.command(
    epilog="""\b
Examples:
  eventbus publish --broker redis://localhost:6379/0 shop.order.placed '{"order_id": "o1"}'
  eventbus publish --broker kafka://localhost:9092 --key o1 --header tenant=acme \\
      shop.order.placed @order.json
  echo '{"order_id": "o1"}' | eventbus publish --broker amqp://localhost/ shop.order.placed -
"""
)
@click.argument("event_type", metavar="TYPE")
@click.argument("payload", metavar="JSON")
@broker_options()
@click.option("--key", help="The partition key: events with one key are handled in order.")
@click.option(
    "--header",
    multiple=True,
    callback=_headers,
    metavar="NAME=VALUE",
    help="A CloudEvents extension attribute (lowercase letters and digits).",
)
@click.option("--destination", help="Where to publish (default: the event type).")
@click.option(
    "--version",
    "data_version",
    type=click.IntRange(min=1),
    help="The event's schema version (dataversion).",
)
@click.option("--source", default="eventbus-cli", show_default=True, help="The CloudEvents source.")
@click.option("--id", "event_id", help="The event id (default: a new one).")
def publish(
    event_type: str,
    payload: str,
    broker: str,
    broker_option: dict[str, Any],
    key: str | None,
    header: dict[str, str],
    destination: str | None,
    data_version: int | None,
    source: str,
    event_id: str | None,
) -> None:
    """Publish one event of type TYPE with the payload JSON (@file reads a file, - stdin).

    The event id is printed on stdout.
    """
    try:
        validate_type_name(event_type)
    except Exception as exc:
        raise click.BadParameter(str(exc), param_hint="TYPE") from None
    data = _payload(payload)
    eid = event_id or new_event_id()
    envelope = new_envelope(
        id=eid,
        type=event_type,
        source=source,
        data=data,
        time=datetime.now(timezone.utc),
        partitionkey=key,
        correlationid=eid,
        dataversion=data_version,
        extensions=header,
    )

    async def main() -> Envelope:
        async with open_bus(broker, broker_option) as bus:
            return await bus.publish_envelope(envelope, destination or event_type)

    click.echo(run(main()).id)


def _payload(text: str) -> bytes:
    if text == "-":
        text = sys.stdin.read()
    elif text.startswith("@"):
        try:
            text = Path(text[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise click.BadParameter(
                f"cannot read {text[1:]!r}: {exc.strerror}", param_hint="JSON"
            ) from None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="JSON") from None
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


@click.command(
    epilog="""\b
Examples:
  eventbus tail --broker redis://localhost:6379/0 'shop.#'
  eventbus tail --broker kafka://localhost:9092 shop.order.placed --count 1
"""
)
@click.argument("pattern")
@broker_options()
@click.option("--count", type=click.IntRange(min=1), help="Exit after this many events.")
@click.option(
    "--group",
    help="The consumer group to read in (default: a new eventbus-tail-* "
    "group of its own, so no other consumer's share is taken).",
)
def tail(
    pattern: str, broker: str, broker_option: dict[str, Any], count: int | None, group: str | None
) -> None:
    """Print the events that arrive on PATTERN (a type, or * and # patterns), one
    CloudEvents JSON document a line, until Ctrl-C (or --count).

    Events are acknowledged as they are printed, in a group of the tail's own.
    """
    run(_tail(pattern, broker, broker_option, count, group))


async def _tail(
    pattern: str, broker: str, options: dict[str, Any], count: int | None, group: str | None
) -> None:
    own_group = group is None
    group = group or f"eventbus-tail-{uuid.uuid4().hex[:12]}"
    stopping = asyncio.Event()
    seen = 0
    router = Router()

    @router.subscribe(pattern, group=group)
    async def show(envelope: Envelope) -> None:
        nonlocal seen
        click.echo(to_structured(envelope).decode("utf-8", "replace"))
        seen += 1
        if count is not None and seen >= count:
            stopping.set()

    on_signals(stopping)
    async with open_bus(broker, options, routers=[router], middleware=()) as bus:
        click.echo(f"tailing {pattern!r} in group {group!r}; Ctrl-C to stop", err=True)
        await stopping.wait()
    if own_group:
        await _remove_group(bus, bus.subscriptions[0])


async def _remove_group(bus: EventBus, subscription: Subscription) -> None:
    """Delete the tail's own group from the broker, so that nothing keeps collecting for it."""
    remove = getattr(bus.broker, "remove_group", None)
    if remove is None:
        click.echo(f"note: this broker keeps the group {subscription.group!r}", err=True)
        return
    await bus.broker.connect()
    try:
        await remove(subscription)
    except EventBusError as exc:
        click.echo(f"warning: the group {subscription.group!r} stays: {describe(exc)}", err=True)
    finally:
        await bus.broker.close()
