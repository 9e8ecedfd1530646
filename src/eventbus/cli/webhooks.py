"""``eventbus webhooks list|attempts|replay|enable|disable``: the endpoints and the delivery
log of a :class:`~eventbus.webhooks.WebhookStore` in the database ``--db`` names.

Secrets are never printed: an endpoint shows how many secrets sign its requests, not what they
are, and URLs (the database's, an endpoint's) lose their passwords and secret parameters.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.table import Table

from eventbus.cli.common import (
    database,
    db_option,
    echo_json,
    fail,
    limit_option,
    missing_tables,
    moment,
    print_table,
    run,
)
from eventbus.redact import redact_url

if TYPE_CHECKING:
    from eventbus.webhooks import AttemptRecord, Endpoint, WebhookStore

__all__ = ["webhooks"]

T = TypeVar("T")
TABLES_FIX = (
    "check that --db is the application's database and --prefix its webhook tables' prefix "
    "(created by WebhookStore.create_tables() or the application's migrations)"
)


@click.group(
    epilog="""\b
Examples:
  eventbus webhooks list --db postgresql+asyncpg://app@db/app --tenant acme
  eventbus webhooks attempts --db postgresql+asyncpg://app@db/app ep_5d41402abc4b2a76b9719d91
  eventbus webhooks replay --db postgresql+asyncpg://app@db/app dl_7b8b965ad4bca0e41ab51de7
  eventbus webhooks disable --db sqlite+aiosqlite:///app.db ep_5d41402abc4b2a76b9719d91

Exit codes: 0 done; 1 failed - an unknown endpoint or delivery id, no such tables, an
unreachable database (one line on stderr says why); 2 bad usage.
"""
)
def webhooks() -> None:
    """See webhook endpoints and their delivery log; replay a delivery; enable or disable an
    endpoint."""


def _store_options(command: Any) -> Any:
    command = click.option(
        "--prefix",
        default="eventbus_webhook",
        show_default=True,
        help="The prefix of the webhook tables (WebhookStore(prefix=...)).",
    )(command)
    return db_option("the WebhookStore")(command)


def _webhooks() -> Any:
    return importlib.import_module("eventbus.webhooks")  # needs its extra: loaded when run


@contextlib.asynccontextmanager
async def _store(db: str, prefix: str) -> AsyncIterator[WebhookStore]:
    engine = database(db)
    try:
        yield _webhooks().WebhookStore(engine, prefix=prefix)
    finally:
        await engine.dispose()


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    with missing_tables(TABLES_FIX), _known():
        return run(coroutine)


@contextlib.contextmanager
def _known() -> Iterator[None]:
    """An unknown endpoint or delivery id: one line saying where the ids are."""
    module = _webhooks()
    try:
        yield
    except module.EndpointNotFound as exc:
        raise fail(f"{exc}; `eventbus webhooks list` shows the endpoints' ids") from exc
    except module.DeliveryNotFound as exc:
        raise fail(f"{exc}; `eventbus webhooks attempts` shows the deliveries' ids") from exc


# ---------------------------------------------------------------- list
@webhooks.command(
    "list",
    epilog="""\b
Examples:
  eventbus webhooks list --db postgresql+asyncpg://app@db/app
  eventbus webhooks list --db sqlite+aiosqlite:///app.db --tenant acme --json
""",
)
@_store_options
@click.option("--tenant", help="Only this tenant's endpoints.")
@click.option("--json", "as_json", is_flag=True, help="JSON on stdout, for scripts.")
def list_command(db: str, prefix: str, tenant: str | None, as_json: bool) -> None:
    """The endpoints, oldest first: URL, event types, enabled or why not, how many secrets
    sign, and the age of the oldest delivery waiting (never the secrets)."""

    async def main() -> list[dict[str, Any]]:
        async with _store(db, prefix) as store:
            found = await store.endpoints.list(tenant=tenant)
            lag = await store.deliveries.lag()
            now = store.now()
            return [endpoint_json(e, now, lag.get(e.id, 0.0)) for e in found]

    rows = _run(main())
    if as_json:
        echo_json(rows)
        return
    table = Table("ID", "TENANT", "URL", "EVENT TYPES", "ENABLED", "SECRETS", "LAG (S)")
    for row in rows:
        enabled = "yes" if row["enabled"] else f"no: {row['disabled_reason'] or ''}"
        types = ", ".join(row["event_types"])
        table.add_row(
            row["id"],
            row["tenant"],
            row["url"],
            types,
            enabled,
            str(row["signing_secrets"]),
            f"{row['lag_seconds']:.0f}",
        )
    print_table(table)
    click.echo(f"{len(rows)} endpoint(s)", err=True)


def endpoint_json(endpoint: Endpoint, now: float, lag: float) -> dict[str, Any]:
    """An endpoint as JSON, without its secrets."""
    return {
        "id": endpoint.id,
        "tenant": endpoint.tenant,
        "url": redact_url(endpoint.url),
        "event_types": list(endpoint.event_types),
        "enabled": endpoint.enabled,
        "disabled_reason": endpoint.disabled_reason,
        "description": endpoint.description,
        "created_at": moment(endpoint.created_at),
        "signing_secrets": len(endpoint.signing_secrets(now)),
        "lag_seconds": lag,
    }


# ---------------------------------------------------------------- attempts
@webhooks.command(
    "attempts",
    epilog="""\b
Examples:
  eventbus webhooks attempts --db postgresql+asyncpg://app@db/app
  eventbus webhooks attempts --db sqlite+aiosqlite:///app.db ep_5d41402abc4b2a76b9719d91
  eventbus webhooks attempts --db sqlite+aiosqlite:///app.db --limit 20 --json \\
      --delivery dl_7b8b965ad4bca0e41ab51de7
""",
)
@_store_options
@click.argument("endpoint_id", required=False, metavar="[ENDPOINT_ID]")
@click.option("--delivery", "delivery_id", metavar="ID", help="Only this delivery's attempts.")
@limit_option("Show at most this many, the newest.")
@click.option("--json", "as_json", is_flag=True, help="JSON on stdout, for scripts.")
def attempts(
    db: str,
    prefix: str,
    endpoint_id: str | None,
    delivery_id: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """The delivery log, newest first: of every endpoint, of ENDPOINT_ID, or of one
    --delivery. Each attempt: when, the outcome, the response code, the latency, the error,
    and when the next attempt goes."""

    async def main() -> list[AttemptRecord]:
        async with _store(db, prefix) as store:
            log = await store.deliveries.attempts(endpoint_id, delivery_id=delivery_id, limit=limit)
            if not log and endpoint_id is not None:
                await store.endpoints.get(endpoint_id)  # the log of a removed endpoint stays
            if not log and delivery_id is not None:
                await store.deliveries.get(delivery_id)
            return log

    log = _run(main())
    if as_json:
        echo_json([attempt_json(a) for a in log])
        return
    columns = ["STARTED", "DELIVERY", "ATTEMPT", "OUTCOME", "CODE", "LATENCY (MS)", "NEXT"]
    table = Table(*(["ENDPOINT"] if endpoint_id is None else []), *columns, "ERROR")
    for a in log:
        shown = [
            moment(a.started_at, short=True) or "",
            a.delivery_id,
            str(a.attempt),
            a.outcome,
            str(a.status_code or ""),
            f"{a.latency * 1000:.0f}",
            moment(a.next_attempt_at, short=True) or "",
            (a.error or "")[:60],
        ]
        table.add_row(*([a.endpoint_id] if endpoint_id is None else []), *shown)
    print_table(table)
    click.echo(f"{len(log)} attempt(s)", err=True)


def attempt_json(attempt: AttemptRecord) -> dict[str, Any]:
    shown = dataclasses.asdict(attempt)
    return {**shown, "started_at": moment(attempt.started_at),
            "next_attempt_at": moment(attempt.next_attempt_at)}  # fmt: skip


# ---------------------------------------------------------------- replay, enable, disable
@webhooks.command(
    "replay",
    epilog="""\b
Examples:
  eventbus webhooks replay --db postgresql+asyncpg://app@db/app dl_7b8b965ad4bca0e41ab51de7
""",
)
@_store_options
@click.argument("delivery_id")
def replay(db: str, prefix: str, delivery_id: str) -> None:
    """Send a delivery again (dead, or delivered and lost by the receiver): due now, attempts
    from 0, the same webhook-id, so a receiver that did handle it recognises the duplicate.
    The application's WebhookSender sends it."""

    async def main() -> Endpoint:
        async with _store(db, prefix) as store:
            delivery = await store.deliveries.get(delivery_id)
            try:
                endpoint = await store.endpoints.get(delivery.endpoint_id)
            except _webhooks().EndpointNotFound as exc:
                raise fail(
                    f"the endpoint {delivery.endpoint_id!r} of delivery {delivery_id!r} was "
                    "removed: nothing would send it"
                ) from exc
            await store.deliveries.replay(delivery_id)
            return endpoint

    endpoint = _run(main())
    waits = "" if endpoint.enabled else (
        f"; its endpoint {endpoint.id!r} is disabled, so it waits until `eventbus webhooks enable`"
    )  # fmt: skip
    click.echo(f"delivery {delivery_id!r} is due again{waits}", err=True)


@webhooks.command(
    "enable",
    epilog="""\b
Examples:
  eventbus webhooks enable --db postgresql+asyncpg://app@db/app ep_5d41402abc4b2a76b9719d91
""",
)
@_store_options
@click.argument("endpoint_id")
def enable(db: str, prefix: str, endpoint_id: str) -> None:
    """Deliver to the endpoint again: the deliveries that waited go at once."""

    async def main() -> None:
        async with _store(db, prefix) as store:
            await store.endpoints.enable(endpoint_id)

    _run(main())
    click.echo(f"endpoint {endpoint_id!r} enabled", err=True)


@webhooks.command(
    "disable",
    epilog="""\b
Examples:
  eventbus webhooks disable --db postgresql+asyncpg://app@db/app ep_5d41402abc4b2a76b9719d91
  eventbus webhooks disable --db sqlite+aiosqlite:///app.db --reason "receiver down" \\
      ep_5d41402abc4b2a76b9719d91
""",
)
@_store_options
@click.argument("endpoint_id")
@click.option(
    "--reason",
    default="disabled by an operator",
    show_default=True,
    help="Why, shown by `eventbus webhooks list`.",
)
def disable(db: str, prefix: str, endpoint_id: str, reason: str) -> None:
    """Stop delivering to the endpoint: its deliveries wait (nothing is dropped) until it is
    enabled again."""

    async def main() -> None:
        async with _store(db, prefix) as store:
            await store.endpoints.disable(endpoint_id, reason)

    _run(main())
    click.echo(f"endpoint {endpoint_id!r} disabled: {reason}", err=True)
