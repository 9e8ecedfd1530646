"""What every command shares: exit codes, the one-line error, loading ``module:attribute``,
opening a bus on ``--broker`` and an engine on ``--db``, and running a coroutine."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import click

from eventbus.bus import EventBus
from eventbus.errors import BrokerUnavailable, EventBusError
from eventbus.redact import redact_text, redact_url

__all__ = [
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_USAGE",
    "CommandFailed",
    "broker_options",
    "confirm",
    "database",
    "db_option",
    "describe",
    "echo_json",
    "fail",
    "load",
    "limit_option",
    "load_all",
    "missing_tables",
    "moment",
    "open_bus",
    "out_of_process_warning",
    "print_table",
    "report",
    "run",
]

EXIT_OK = 0
"""The command did what it was asked (a worker: stopped by a signal, after draining)."""
EXIT_FAILURE = 1
"""It could not: an unreachable broker, a bad module path, a failed replay… (one line says
why on stderr)."""
EXIT_USAGE = 2
"""The command line itself is wrong: an unknown option, a missing argument."""

T = TypeVar("T")


class CommandFailed(click.ClickException):
    """A failure the command explains itself: ``error: <message>`` on stderr, exit 1."""

    exit_code = EXIT_FAILURE

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {redact_text(self.message)}", err=True)


def fail(message: str) -> CommandFailed:
    return CommandFailed(message)


def report(exc: BaseException) -> None:
    """One line on stderr for a failure that was not expected to reach the user."""
    click.echo(f"error: {describe(exc)}", err=True)


def describe(exc: BaseException) -> str:
    """What went wrong and what to do about it, secrets removed, on one line."""
    text = " ".join(str(exc).split())
    if isinstance(exc, BrokerUnavailable) and "check" not in text:
        text += "; check that the broker is running and that --broker points at it"
    elif isinstance(exc, (ConnectionError, OSError)) and not isinstance(exc, EventBusError):
        text = f"{type(exc).__name__}: {text}; check that the server is running and reachable"
    elif type(exc).__module__.startswith("sqlalchemy"):
        text = _refused(text)
        if _no_table(text):
            text += (
                "; check that --db is the application's database and --table its table "
                "(created by create_tables() or the application's migrations)"
            )
    elif not isinstance(exc, EventBusError):
        text = f"{type(exc).__name__}: {text} (run with --debug for the traceback)"
    return redact_text(text)


def _refused(text: str) -> str:
    return (
        "the database refused: " + text.split(" (Background on this error")[0].split(" [SQL: ")[0]
    )


def _no_table(text: str) -> bool:
    return "no such table" in text or "does not exist" in text


@contextlib.contextmanager
def missing_tables(fix: str) -> Iterator[None]:
    """Turn "no such table" from the database into one line ending with ``fix`` (what to
    check, for a command whose tables are not named by ``--table``)."""
    try:
        yield
    except Exception as exc:
        text = " ".join(str(exc).split())
        if type(exc).__module__.startswith("sqlalchemy") and _no_table(text):
            raise fail(f"{_refused(text)}; {fix}") from exc
        raise


def moment(seconds: float | None, *, short: bool = False) -> str | None:
    """Seconds since the epoch as an ISO-8601 UTC time (``None`` stays ``None``); ``short``:
    to the second, ``2026-05-01T12:00:00Z``, for tables."""
    if seconds is None:
        return None
    when = datetime.fromtimestamp(seconds, timezone.utc)
    if short:
        return when.strftime("%Y-%m-%dT%H:%M:%SZ")
    return when.isoformat()


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine on a fresh event loop."""
    return asyncio.run(coroutine)


# ---------------------------------------------------------------- app.module:attribute
def load(target: str, kind: type[T], what: str = "bus") -> T:
    """The object ``target`` (``"package.module:attribute"``) names, of type ``kind``.

    The attribute may be dotted (``app.main:container.bus``) or a function of no arguments
    that returns the object (``app.main:create_bus``).
    """
    module_name, colon, attribute = target.partition(":")
    if not colon or not module_name or not attribute:
        raise click.BadParameter(
            f"{target!r} is not module:attribute; name the {what} like app.main:{what}",
            param_hint="TARGET",
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise fail(
                f"cannot import {module_name!r}: no module named {exc.name!r}; run the command "
                "from the directory that holds it, or add that directory to PYTHONPATH"
            ) from exc
        raise fail(f"importing {module_name!r} failed: {describe(exc)}") from exc
    found: Any = module
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise fail(
                f"module {module_name!r} has no attribute {attribute!r}{_hint(module, kind)}"
            )
        found = getattr(found, part)
    if not isinstance(found, kind) and callable(found):
        found = found()
    if not isinstance(found, kind):
        raise fail(
            f"{target} is a {type(found).__name__}, not a {kind.__name__}{_hint(module, kind)}"
        )
    return found


def load_all(target: str, kind: type[T], what: str) -> list[T]:
    """The objects of type ``kind`` that ``target`` names: one, a list, tuple or dict of them,
    or a function of no arguments that returns one of those."""
    found: Any = load(target, object, what=what)
    if callable(found) and not isinstance(found, kind):
        found = found()
    if isinstance(found, dict):
        found = list(found.values())
    items = [found] if isinstance(found, kind) else found
    if not isinstance(items, (list, tuple)) or not all(isinstance(i, kind) for i in items):
        raise fail(
            f"{target} is not a {kind.__name__}, nor a list or dict of them (nor a function "
            "that returns those)"
        )
    return list(items)


def _hint(module: Any, kind: type[Any]) -> str:
    names = [name for name, value in vars(module).items() if isinstance(value, kind)]
    if not names:
        return ""
    return f"; it has {kind.__name__} objects: " + ", ".join(sorted(names))


# ---------------------------------------------------------------- --broker and --db
def _parse_option(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in values:
        name, equals, value = item.partition("=")
        if not equals or not name:
            raise click.BadParameter(f"{item!r} is not NAME=VALUE", ctx, param)
        try:
            options[name] = json.loads(value)
        except ValueError:
            options[name] = value
    return options


def broker_options(required: bool = True) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--broker URL`` (or ``EVENTBUS_BROKER``) and ``--broker-option NAME=VALUE``."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        command = click.option(
            "--broker-option",
            "broker_option",
            multiple=True,
            callback=_parse_option,
            metavar="NAME=VALUE",
            help="A keyword option for the adapter (JSON values), e.g. sasl_plain_username=app.",
        )(command)
        return click.option(
            "--broker",
            required=required,
            envvar="EVENTBUS_BROKER",
            metavar="URL",
            help="The broker: memory://, redis://…, amqp://…, kafka://… (or EVENTBUS_BROKER).",
        )(command)

    return decorate


@contextlib.asynccontextmanager
async def open_bus(
    url: str, options: dict[str, Any], **bus_options: Any
) -> AsyncIterator[EventBus]:
    """A started bus on ``url`` with no subscriptions of its own (for the operator commands)."""
    bus = EventBus(url, service="eventbus-cli", **bus_options, **options)
    try:
        await bus.start()
    except EventBusError:
        raise
    except Exception as exc:
        raise BrokerUnavailable(f"cannot connect to {redact_url(url)}: {describe(exc)}") from exc
    try:
        yield bus
    finally:
        await bus.stop()


def db_option(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--db URL`` (or ``EVENTBUS_DB``), required: the database ``what`` is in."""
    return click.option(
        "--db",
        required=True,
        envvar="EVENTBUS_DB",
        metavar="URL",
        help=f"The database {what} is in, e.g. postgresql+asyncpg://user@host/db (or EVENTBUS_DB).",
    )


def limit_option(
    help: str, default: int = 100
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--limit N``: how many rows a listing looks at."""
    return click.option(
        "--limit", type=click.IntRange(min=1), default=default, show_default=True, help=help
    )


def database(url: str) -> Any:
    """An ``AsyncEngine`` for ``url``, or a :class:`CommandFailed` that shows a good one."""
    try:
        from sqlalchemy.ext.asyncio import create_async_engine
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise fail('--db needs SQLAlchemy and a driver: pip install "eventbus[sql]"') from exc
    example = (
        "use postgresql+asyncpg://user:password@host/dbname or sqlite+aiosqlite:///path/app.db"
    )
    try:
        engine = create_async_engine(url)
    except Exception as exc:
        raise fail(f"bad database URL {redact_url(url)!r} ({describe(exc)}); {example}") from exc
    path = engine.url.database if engine.dialect.name == "sqlite" else None
    if path and path != ":memory:" and not path.startswith("file:") and not Path(path).exists():
        raise fail(f"there is no SQLite database at {path!r}: check --db")
    if not engine.dialect.is_async:  # pragma: no cover - create_async_engine refuses first
        raise fail(f"{redact_url(url)!r} names a synchronous driver; {example}")
    return engine


def echo_json(value: Any) -> None:
    """``value`` as JSON on stdout, for scripts."""
    click.echo(json.dumps(value, indent=2, default=str, ensure_ascii=False))


def print_table(table: Any) -> None:
    """A rich ``Table`` on stdout with nothing in it cut: on a terminal it fits the width (an
    id too long for its column folds onto the next line); in a pipe or a file every row is one
    line, however wide, for ``grep`` and ``cut``."""
    from rich.console import Console
    from rich.measure import Measurement

    for column in table.columns:
        column.overflow = "fold"
    console = Console(soft_wrap=False)
    if not console.is_terminal:
        widest = Measurement.get(console, console.options.update_width(10**6), table).maximum
        console = Console(soft_wrap=False, width=max(widest, console.width))
    console.print(table)


def out_of_process_warning(url: str) -> None:
    if url.startswith("memory:"):
        click.echo(
            "warning: memory:// holds nothing between processes: this sees only what this "
            "process put there",
            err=True,
        )


def confirm(question: str, yes: bool) -> None:
    """Ask ``question`` unless ``--yes``; no (or no terminal to answer on) aborts, exit 1."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise fail(f"{question} - refusing without a terminal to confirm on; pass --yes")
    if not click.confirm(question, default=False, err=True):
        raise fail("nothing done")
