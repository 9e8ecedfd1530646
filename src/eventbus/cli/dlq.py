"""``eventbus dlq list|show|replay|purge``: the dead letters of a broker, or of the outbox.

Every broker keeps its dead letters where the bus's ``dead_letters`` store reads them, so
these commands work alike on Redis, RabbitMQ and Kafka (``memory://`` only within one
process). ``--db URL`` works on the outbox's dead rows instead (rows the relay gave up on).
A replay puts each message back on the subscription it failed in with its event id
unchanged, so idempotent consumers recognise it.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from eventbus.cli.common import (
    confirm,
    echo_json,
    fail,
    limit_option,
    print_table,
    run,
)
from eventbus.cli.filters import Filter, Source, filter_options, open_store, source_options
from eventbus.deadletters import DeadLetterRecord, DeadLetterStore
from eventbus.errors import DeadLetterNotFound

__all__ = ["dlq", "record_json"]

SCAN_LIMIT = 10_000
"""How many dead letters replay and purge look at, at most, in one run (``--limit``)."""


@click.group(
    epilog="""\b
Examples:
  eventbus dlq list --broker redis://localhost:6379/0 --group billing.charge
  eventbus dlq show 1714-0 --broker redis://localhost:6379/0 --json
  eventbus dlq replay --broker kafka://localhost:9092 --error-type TimeoutError --since 2h
  eventbus dlq purge --broker amqp://guest:guest@localhost/ --group billing.charge --yes
  eventbus dlq list --db postgresql+asyncpg://app@db/app     (the outbox's dead rows)
"""
)
def dlq() -> None:
    """List, inspect, replay and purge dead letters."""


async def _matching(store: DeadLetterStore, chosen: Filter, limit: int) -> list[DeadLetterRecord]:
    return [r for r in await store.list(group=chosen.group, limit=limit) if chosen(r)]


# ---------------------------------------------------------------- list, show
@dlq.command(
    "list",
    epilog="""\b
Examples:
  eventbus dlq list --broker redis://localhost:6379/0
  eventbus dlq list --broker kafka://localhost:9092 --group billing.charge --since 2h
  eventbus dlq list --broker amqp://guest:guest@localhost/ --json | jq '.[].event_id'
  eventbus dlq list --db postgresql+asyncpg://app@db/app    (the outbox's dead rows)
""",
)
@source_options
@filter_options
@limit_option("Look at this many dead letters, oldest first.")
@click.option("--json", "as_json", is_flag=True, help="JSON on stdout, for scripts.")
def list_command(
    source: Source,
    chosen: Filter,
    limit: int,
    as_json: bool,
) -> None:
    """List dead letters, oldest first: a table, or JSON with --json."""

    async def main() -> list[DeadLetterRecord]:
        async with open_store(source) as store:
            return await _matching(store, chosen, limit)

    records = run(main())
    if as_json:
        echo_json([record_json(r) for r in records])
        return
    table_ = Table("ID", "GROUP", "EVENT TYPE", "EVENT ID", "ERROR", "ATTEMPTS", "LAST FAILED")
    for r in records:
        error = f"{r.error_type.rsplit('.', 1)[-1]}: {r.error_message}"
        when = r.last_failure_at or r.first_failure_at
        table_.add_row(
            r.id,
            r.group,
            r.event_type or "",
            r.event_id or "",
            error[:60],
            str(r.attempts),
            when.isoformat(timespec="seconds") if when else "",
        )
    print_table(table_)
    click.echo(f"{len(records)} dead letter(s)", err=True)


@dlq.command(
    "show",
    epilog="""\b
Examples:
  eventbus dlq show 1714561234567-0 --broker redis://localhost:6379/0
  eventbus dlq show 42 --db sqlite+aiosqlite:///app.db --json
""",
)
@click.argument("dead_letter_id", metavar="ID")
@source_options
@click.option("--json", "as_json", is_flag=True, help="JSON on stdout, for scripts.")
def show(
    dead_letter_id: str,
    source: Source,
    as_json: bool,
) -> None:
    """Show one dead letter: why it failed, its headers, its body and the traceback."""

    async def main() -> DeadLetterRecord | None:
        async with open_store(source) as store:
            return await store.get(dead_letter_id)

    record = run(main())
    if record is None:
        raise fail(f"no dead letter {dead_letter_id!r}; `eventbus dlq list` shows the ids")
    shown = record_json(record, full=True)
    if as_json:
        echo_json(shown)
        return
    for name in ("headers", "body", "traceback"):
        value = shown.pop(name)
        shown[name] = value
    for name, value in shown.items():
        if name == "headers":
            click.echo("headers:")
            for header, text in value.items():
                click.echo(f"  {header}: {text}")
        elif name == "traceback":
            click.echo(f"traceback:\n{value}" if value else "traceback: (none)")
        else:
            click.echo(f"{name}: {'' if value is None else value}")


def record_json(record: DeadLetterRecord, *, full: bool = False) -> dict[str, Any]:
    """A dead letter as JSON: its provenance; with ``full``, headers, body and traceback."""
    shown: dict[str, Any] = {
        "id": record.id,
        "destination": record.destination,
        "group": record.group,
        "subscription": record.subscription,
        "event_id": record.event_id,
        "event_type": record.event_type,
        "reason": record.reason,
        "error_type": record.error_type,
        "error_message": record.error_message,
        "attempts": record.attempts,
        "first_failure_at": _time(record.first_failure_at),
        "last_failure_at": _time(record.last_failure_at),
        "traceparent": record.traceparent,
    }
    if full:
        shown["headers"] = {str(k): _text(v) for k, v in record.headers.items()}
        try:
            shown["body"] = record.body.decode("utf-8")
        except UnicodeDecodeError:
            shown["body_base64"] = base64.b64encode(record.body).decode("ascii")
            shown["body"] = None
        shown["traceback"] = record.traceback
    return shown


def _time(moment: Any) -> str | None:
    return None if moment is None else moment.isoformat()


def _text(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


# ---------------------------------------------------------------- replay, purge
@dlq.command(
    "replay",
    epilog="""\b
Examples:
  eventbus dlq replay 1714561234567-0 --broker redis://localhost:6379/0
  eventbus dlq replay --broker kafka://localhost:9092 --group billing.charge
  eventbus dlq replay --broker amqp://localhost/ --error-type TimeoutError --since 2h
  eventbus dlq replay --broker redis://localhost:6379/0 --all
""",
)
@click.argument("ids", nargs=-1, metavar="[ID]...")
@source_options
@filter_options
@click.option("--all", "everything", is_flag=True, help="Replay every dead letter.")
@limit_option("Look at this many dead letters at most.", SCAN_LIMIT)
@click.option("--json", "as_json", is_flag=True, help="A JSON summary on stdout.")
def replay(
    ids: Sequence[str],
    source: Source,
    chosen: Filter,
    everything: bool,
    limit: int,
    as_json: bool,
) -> None:
    """Replay dead letters: the given IDs, those a filter selects, or --all.

    Each goes back to the subscription it failed in, with its event id unchanged, and leaves
    the dead-letter queue. A progress bar shows on a terminal.
    """
    if not ids and chosen.empty and not everything:
        raise click.UsageError(
            "say which dead letters to replay: IDs, a filter (--group, --error-type, "
            "--event-type, --since) or --all"
        )

    async def main() -> tuple[list[str], list[str]]:
        async with open_store(source) as store:
            found = [] if ids else await _matching(store, chosen, limit)
            targets = list(ids) or [r.id for r in found]
            return await _replay_all(store, targets)

    replayed, failed = run(main())
    if as_json:
        echo_json({"replayed": replayed, "failed": failed})
    click.echo(f"replayed {len(replayed)} dead letter(s)", err=True)
    if failed:
        raise fail(f"{len(failed)} could not be replayed: {', '.join(failed[:10])}")


async def _replay_all(store: DeadLetterStore, ids: list[str]) -> tuple[list[str], list[str]]:
    console = Console(stderr=True)
    replayed: list[str] = []
    failed: list[str] = []
    columns = (TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=not console.is_terminal) as progress:
        task = progress.add_task("replay", total=len(ids))
        for dead_letter_id in ids:
            try:
                await store.replay(dead_letter_id)
                replayed.append(dead_letter_id)
            except DeadLetterNotFound:
                failed.append(f"{dead_letter_id} (gone)")
            progress.advance(task)
    return replayed, failed


@dlq.command(
    "purge",
    epilog="""\b
Examples:
  eventbus dlq purge --broker redis://localhost:6379/0 --group billing.charge
  eventbus dlq purge --broker kafka://localhost:9092 --yes
""",
)
@source_options
@click.option("--group", metavar="GROUP", help="Only this consumer group's (default: all).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="A JSON summary on stdout.")
def purge(
    source: Source,
    group: str | None,
    yes: bool,
    as_json: bool,
) -> None:
    """Delete dead letters for good: all of them, or one group's. Asks first, unless --yes."""

    async def main() -> int:
        async with open_store(source) as store:
            count = len(await store.list(group=group, limit=SCAN_LIMIT))
            whose = f"of group {group!r}" if group else "of every group"
            if count == 0:
                return 0
            confirm(f"Delete {count} dead letter(s) {whose} on {source.shown} for good?", yes)
            return await store.purge(group=group)

    purged = run(main())
    if as_json:
        echo_json({"purged": purged})
    click.echo(f"purged {purged} dead letter(s)", err=True)
