"""Which dead letters a ``dlq`` command works on: where they are (``--broker``, ``--app`` or
``--db``, given to the command as a :class:`Source`) and which of them (``--group``,
``--error-type``, ``--event-type``, ``--since``, given as a :class:`Filter`)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import re
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import click

from eventbus.bus import EventBus
from eventbus.cli.common import (
    broker_options,
    database,
    fail,
    load,
    open_bus,
    out_of_process_warning,
)
from eventbus.deadletters import DeadLetterRecord, DeadLetterStore
from eventbus.redact import redact_url

__all__ = ["Filter", "Source", "parse_since", "filter_options", "open_store", "source_options"]

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str | None, now: datetime | None = None) -> datetime | None:
    """``30m``, ``2h``, ``7d`` (ago) or an ISO-8601 time (UTC unless it says otherwise)."""
    if text is None:
        return None
    now = now or datetime.now(timezone.utc)
    found = _DURATION.match(text.strip())
    if found:
        return now - timedelta(**{_UNITS[found.group(2)]: float(found.group(1))})
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is neither a duration (30s, 15m, 2h, 7d, 1w) nor an ISO-8601 time "
            "(2026-05-01T12:00:00+00:00)",
            param_hint="--since",
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


@dataclasses.dataclass(frozen=True)
class Filter:
    """Which dead letters a command works on; an empty filter takes every one."""

    group: str | None = None
    error_type: str | None = None
    event_type: str | None = None
    since: datetime | None = None

    @property
    def empty(self) -> bool:
        return not (self.group or self.error_type or self.event_type or self.since)

    def __call__(self, record: DeadLetterRecord) -> bool:
        if self.group is not None and record.group != self.group:
            return False
        if self.error_type is not None and not _same_error(record.error_type, self.error_type):
            return False
        if self.event_type is not None and record.event_type != self.event_type:
            return False
        if self.since is not None:
            when = record.last_failure_at or record.first_failure_at
            if when is None or _aware(when) < self.since:
                return False
        return True


def _same_error(recorded: str, wanted: str) -> bool:
    """``ValueError`` matches ``builtins.ValueError`` and ``app.errors.ValueError`` alike."""
    return recorded == wanted or recorded.rsplit(".", 1)[-1] == wanted


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


@dataclasses.dataclass(frozen=True)
class Source:
    """Where the dead letters are: ``--broker``, ``--app`` or ``--db`` (one of them)."""

    broker: str | None
    broker_option: dict[str, Any]
    db: str | None
    app: str | None
    table: str

    @property
    def shown(self) -> str:
        return redact_url(self.broker or self.db or self.app)


def _wrapping(wrapper: Callable[..., Any], command: Callable[..., Any]) -> Callable[..., Any]:
    """``wrapper`` in the place of ``command``: its name, help and options. Not
    ``functools.wraps``: click would read the wrapped signature and pass it fewer options."""
    functools.update_wrapper(wrapper, command)
    del wrapper.__wrapped__  # type: ignore[attr-defined]
    return wrapper


def source_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options that say where the dead letters are, given to ``command`` as ``source``."""

    def with_source(
        *args: Any,
        broker: str | None,
        broker_option: dict[str, Any],
        db: str | None,
        app: str | None,
        table: str,
        **kwargs: Any,
    ) -> Any:
        return command(*args, source=Source(broker, broker_option, db, app, table), **kwargs)

    wrapped = _wrapping(with_source, command)
    for option in (
        click.option(
            "--table",
            default="eventbus_outbox",
            show_default=True,
            help="With --db: the outbox table.",
        ),
        click.option(
            "--db", metavar="URL", help="Work on the outbox's dead rows in this database instead."
        ),
        click.option(
            "--app",
            metavar="MODULE:BUS",
            help="Take the broker and the subscriptions from the application's bus (needed "
            "on RabbitMQ, whose dead-letter queues are named after the subscriptions).",
        ),
    ):
        wrapped = option(wrapped)
    return broker_options(required=False)(wrapped)


def filter_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options that choose dead letters, given to ``command`` as ``chosen``."""

    def with_filter(
        *args: Any,
        group: str | None,
        error_type: str | None,
        event_type: str | None,
        since: str | None,
        **kwargs: Any,
    ) -> Any:
        chosen = Filter(group, error_type, event_type, parse_since(since))
        return command(*args, chosen=chosen, **kwargs)

    wrapped = _wrapping(with_filter, command)
    for option in (
        click.option(
            "--since",
            metavar="WHEN",
            help="Failed at most this long ago (2h, 7d) or since this ISO-8601 time.",
        ),
        click.option("--event-type", metavar="TYPE", help="Only dead letters of this event type."),
        click.option(
            "--error-type",
            metavar="NAME",
            help="Only those that failed with this "
            "error (ValueError or app.errors.PaymentDeclined).",
        ),
        click.option("--group", metavar="GROUP", help="Only this consumer group's."),
    ):
        wrapped = option(wrapped)
    return wrapped


@contextlib.asynccontextmanager
async def open_store(source: Source) -> AsyncIterator[DeadLetterStore]:
    broker, db, app = source.broker, source.db, source.app
    if sum(x is not None for x in (broker, db, app)) != 1:
        raise click.UsageError(
            "give one of --broker URL (the broker's dead letters), --app MODULE:BUS (the "
            "broker of the application's bus) or --db URL (the outbox's dead rows)"
        )
    if app is not None:
        async with _app_store(load(app, EventBus)) as store:
            yield store
        return
    if broker is not None:
        out_of_process_warning(broker)
        async with open_bus(broker, source.broker_option) as bus:
            if hasattr(bus.broker.dead_letters, "include"):
                raise fail(
                    f"the dead-letter queues of {redact_url(broker)} are named after the "
                    "subscriptions: pass --app MODULE:BUS (the application's bus) instead of "
                    "--broker"
                )
            yield bus.dead_letters
        return
    assert db is not None
    engine = database(db)
    try:
        yield (
            importlib.import_module("eventbus.outbox")
            .Outbox(table=source.table)
            .dead_letters(engine)
        )
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def _app_store(bus: EventBus) -> AsyncIterator[DeadLetterStore]:
    """The dead letters of ``bus``'s broker, connected without starting a subscription."""
    await bus.broker.connect()
    try:
        include = getattr(bus.broker.dead_letters, "include", None)
        if include is not None:
            for subscription in bus.subscriptions:
                include(subscription)
        yield bus.dead_letters
    finally:
        await bus.broker.close()
