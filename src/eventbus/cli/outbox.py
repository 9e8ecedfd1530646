"""``eventbus outbox relay|status``: publish the outbox of a database, or see what waits in it."""

from __future__ import annotations

import asyncio
import importlib
import logging
from typing import Any

import click

from eventbus.cli.common import broker_options, database, db_option, echo_json, fail, open_bus, run
from eventbus.cli.signals import LOG_LEVELS, configure_logging, on_signals

__all__ = ["outbox"]

log = logging.getLogger("eventbus.cli")


def _outbox_module() -> Any:
    return importlib.import_module("eventbus.outbox")  # needs the sql extra: loaded when asked


@click.group(
    epilog="""\b
Examples:
  eventbus outbox status --db postgresql+asyncpg://app@db/app
  eventbus outbox status --db sqlite+aiosqlite:///app.db --json
  eventbus outbox relay --db postgresql+asyncpg://app@db/app --broker kafka://kafka:9092
"""
)
def outbox() -> None:
    """Relay and inspect the transactional outbox."""


def _db_option(command: Any) -> Any:
    command = click.option(
        "--table", default="eventbus_outbox", show_default=True, help="The outbox table."
    )(command)
    return db_option("the outbox")(command)


@outbox.command(
    "status",
    epilog="""\b
Examples:
  eventbus outbox status --db postgresql+asyncpg://app@db/app
  eventbus outbox status --db sqlite+aiosqlite:///app.db --json
  eventbus outbox status --db postgresql+asyncpg://app@db/app --max-age 60 --max-dead 0
""",
)
@_db_option
@click.option("--json", "as_json", is_flag=True, help="JSON on stdout, for scripts.")
@click.option(
    "--max-age",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="Exit 1 when the oldest pending row is older than this (for alerts).",
)
@click.option(
    "--max-dead",
    type=click.IntRange(min=0),
    help="Exit 1 when more rows than this are dead (for alerts).",
)
def status(db: str, table: str, as_json: bool, max_age: float | None, max_dead: int | None) -> None:
    """How many rows wait to be published, how old the oldest is, how many are dead."""

    async def main() -> Any:
        engine = database(db)
        try:
            return await _outbox_module().Outbox(table=table).backlog(engine)
        finally:
            await engine.dispose()

    backlog = run(main())
    shown = {
        "pending": backlog.pending,
        "oldest_age_seconds": backlog.oldest_age,
        "dead": backlog.dead,
        "held_keys": backlog.held_keys,
    }
    if as_json:
        echo_json(shown)
        _alert(backlog, max_age, max_dead)
        return
    age = "-" if backlog.oldest_age is None else f"{backlog.oldest_age:.1f}s"
    click.echo(f"pending:     {backlog.pending}")
    click.echo(f"oldest age:  {age}")
    click.echo(f"dead:        {backlog.dead}   (eventbus dlq list --db ...)")
    click.echo(f"held keys:   {backlog.held_keys}")
    _alert(backlog, max_age, max_dead)


def _alert(backlog: Any, max_age: float | None, max_dead: int | None) -> None:
    age = backlog.oldest_age
    if max_age is not None and age is not None and age > max_age:
        raise fail(f"the oldest pending row is {age:.1f}s old, over --max-age {max_age:g}s")
    if max_dead is not None and backlog.dead > max_dead:
        raise fail(f"{backlog.dead} dead row(s), over --max-dead {max_dead}")


@outbox.command(
    "relay",
    epilog="""\b
Examples:
  eventbus outbox relay --db postgresql+asyncpg://app@db/app --broker kafka://kafka:9092
  eventbus outbox relay --db sqlite+aiosqlite:///app.db --broker redis://localhost:6379/0 --once
""",
)
@_db_option
@broker_options()
@click.option(
    "--ordering",
    type=click.Choice(["key", "none"]),
    default="key",
    show_default=True,
    help="key: rows of one key in commit order; none: any order, relays side by side.",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--once", is_flag=True, help="Publish what is due now, then exit.")
@click.option("--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False), default="info")
def relay(
    db: str,
    table: str,
    broker: str,
    broker_option: dict[str, Any],
    ordering: str,
    batch_size: int,
    once: bool,
    log_level: str,
) -> None:
    """Publish the outbox's committed rows to the broker until SIGTERM or SIGINT.

    A signal lets the round in progress finish, then exits 0.
    """
    configure_logging(log_level)
    run(_relay(db, table, broker, broker_option, ordering, batch_size, once))


async def _relay(
    db: str,
    table: str,
    broker: str,
    options: dict[str, Any],
    ordering: str,
    batch_size: int,
    once: bool,
) -> None:
    module = _outbox_module()
    engine = database(db)
    try:
        store = module.Outbox(table=table)
        async with open_bus(broker, options, outbox=store) as bus:
            relay = module.OutboxRelay(engine, bus, ordering=ordering, batch_size=batch_size)
            if once:
                published = await relay.run_once()
                click.echo(f"published {published} row(s)", err=True)
                return
            stopping = asyncio.Event()
            on_signals(stopping)
            async with relay:
                log.info("outbox relay ready: %s -> %s", table, bus.broker)
                await stopping.wait()
        log.info("outbox relay stopped")
    finally:
        await engine.dispose()
