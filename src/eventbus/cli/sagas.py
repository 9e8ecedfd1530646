"""``eventbus sagas list|show|resume MODULE:SAGA``: the instances of a saga, as stored.

The commands take ``MODULE:SAGA``, the application's :class:`~eventbus.sagas.Saga`: one
saga, a list or dict of them (``--saga NAME`` picks one), or a function of no arguments
that returns those. The saga knows its store, so the command needs nothing else; the store
must be one that outlives a process (``SqlSagaStore`` on the application's database).
"""

from __future__ import annotations

import json
from typing import Any

import click
from rich.table import Table

from eventbus.cli.common import (
    confirm,
    echo_json,
    fail,
    limit_option,
    load_all,
    missing_tables,
    moment,
    print_table,
    run,
)
from eventbus.sagas import (
    COMPENSATION_FAILED,
    STATUSES,
    MemorySagaStore,
    Saga,
    SagaInstance,
    SagaNotFound,
    SagaNotResumable,
)

__all__ = ["sagas"]

TABLES_FIX = (
    "check that the saga's store is on the application's database and its tables exist "
    "(SqlSagaStore.create_tables() or the application's migrations)"
)


@click.group(
    epilog="""\b
Examples:
  eventbus sagas list app.checkout:checkout --status compensation_failed
  eventbus sagas show app.checkout:checkout o-1042 --json
  eventbus sagas resume app.sagas:all --saga checkout o-1042 --yes

Exit codes: 0 done; 1 failed - an unknown saga or key, a saga without a store that outlives
the process, an instance that is not in compensation_failed (one line on stderr says why);
2 bad usage.
"""
)
def sagas() -> None:
    """List a saga's instances, show one with its history and timers, resume a stuck one."""


def _saga_option(command: Any) -> Any:
    return click.option(
        "--saga",
        "name",
        metavar="NAME",
        help="Which saga, when MODULE:SAGA names several (by the saga's name).",
    )(command)


def saga_of(target: str, name: str | None) -> Saga[Any]:
    """The saga ``target`` (and ``--saga NAME``) names, with a store that outlives a process."""
    found = load_all(target, Saga, what="saga")
    by_name = {saga.name: saga for saga in found}
    names = ", ".join(sorted(by_name)) or "none"
    if name is None and len(found) != 1:
        raise fail(f"{target} holds {len(found)} sagas: pick one with --saga NAME ({names})")
    if name is not None and name not in by_name:
        raise fail(f"no saga {name!r} in {target}; there are: {names}")
    saga = found[0] if name is None else by_name[name]
    where = (
        "set the application's where the saga is declared: Saga(..., store=SqlSagaStore("
        "engine, outbox=outbox)) or saga.store = ..."
    )
    if saga.store is None:
        raise fail(f"saga {saga.name!r} has no store; {where}")
    if isinstance(saga.store, MemorySagaStore):
        raise fail(
            f"saga {saga.name!r} keeps its instances in a MemorySagaStore, which holds "
            f"nothing between processes; {where}"
        )
    return saga


def _run(saga: Saga[Any], work: Any) -> Any:
    """Run ``work`` (a coroutine on ``saga``), then dispose of its store's engine."""

    async def main() -> Any:
        try:
            return await work
        finally:
            engine = getattr(saga.store, "engine", None)
            if engine is not None:
                await engine.dispose()

    with missing_tables(TABLES_FIX):
        return run(main())


def _not_found(exc: SagaNotFound, target: str, name: str | None) -> click.ClickException:
    which = f" --saga {name}" if name else ""
    return fail(f"{exc}; `eventbus sagas list {target}{which}` lists its instances")


@sagas.command(
    "list",
    epilog="""\b
Examples:
  eventbus sagas list app.checkout:checkout
  eventbus sagas list app.checkout:checkout --status compensation_failed --json
  eventbus sagas list app.sagas:all --saga checkout --limit 500
""",
)
@click.argument("target", metavar="MODULE:SAGA")
@_saga_option
@click.option("--status", type=click.Choice(STATUSES), help="Only the instances in this status.")
@limit_option("Show at most this many, the oldest.")
@click.option("--json", "as_json", is_flag=True, help="JSON on stdout, for scripts.")
def list_command(
    target: str, name: str | None, status: str | None, limit: int, as_json: bool
) -> None:
    """The saga's instances, oldest first: all, or those in one --status."""
    saga = saga_of(target, name)
    found: list[SagaInstance[Any]] = _run(saga, saga.list(status, limit=limit))
    if as_json:
        echo_json([instance_json(i) for i in found])
        return
    table = Table("KEY", "STATUS", "PHASE", "UPDATED", "LAST ERROR")
    for i in found:
        when = moment(i.updated_at, short=True) or ""
        table.add_row(i.key, i.status, i.phase, when, (i.last_error or "")[:80])
    print_table(table)
    click.echo(f"{len(found)} instance(s) of saga {saga.name!r}", err=True)


@sagas.command(
    "show",
    epilog="""\b
Examples:
  eventbus sagas show app.checkout:checkout o-1042
  eventbus sagas show app.sagas:all --saga checkout o-1042 --json
""",
)
@click.argument("target", metavar="MODULE:SAGA")
@click.argument("key")
@_saga_option
@click.option("--json", "as_json", is_flag=True, help="JSON on stdout, for scripts.")
def show(target: str, key: str, name: str | None, as_json: bool) -> None:
    """One instance: its state, phase, version, history of transitions, pending timers and
    last error."""
    saga = saga_of(target, name)
    try:
        instance: SagaInstance[Any] = _run(saga, saga.show(key))
    except SagaNotFound as exc:
        raise _not_found(exc, target, name) from exc
    now = saga.clock.now()
    shown = instance_json(instance, full=True, now=now)
    if as_json:
        echo_json(shown)
        return
    for field in ("saga", "key", "status", "phase", "version", "created_at", "updated_at"):
        click.echo(f"{field}: {shown[field]}")
    click.echo(f"compensations to run (next first): {', '.join(shown['compensations']) or '-'}")
    click.echo(f"attempts of the next: {instance.attempts}")
    click.echo(f"last error: {instance.last_error or '-'}")
    click.echo("state: " + json.dumps(shown["state"], indent=2, ensure_ascii=False))
    click.echo("history:")
    for t in instance.history:
        event = f" (event {t.event_id})" if t.event_id else ""
        error = f"  error: {t.error}" if t.error else ""
        click.echo(
            f"  {moment(t.at, short=True)}  {t.cause}{event} -> {t.status}, {t.phase}{error}"
        )
    click.echo("timers:" if instance.timers else "timers: none pending")
    for timer in instance.timers:
        when, left = moment(timer.due_at, short=True), timer.due_at - now
        click.echo(f"  {timer.kind} {timer.name}: due {when} (in {left:.0f} s)")


def instance_json(
    instance: SagaInstance[Any], *, full: bool = False, now: float = 0.0
) -> dict[str, Any]:
    """An instance as JSON; with ``full``, its state, history and timers too."""
    shown: dict[str, Any] = {
        "saga": instance.saga,
        "key": instance.key,
        "status": instance.status,
        "phase": instance.phase,
        "version": instance.version,
        "compensations": list(reversed(instance.compensations)),
        "attempts": instance.attempts,
        "last_error": instance.last_error,
        "created_at": moment(instance.created_at),
        "updated_at": moment(instance.updated_at),
    }
    if full:
        shown["state"] = instance.state.model_dump(mode="json")
        shown["history"] = [{**t.to_json(), "at": moment(t.at)} for t in instance.history]
        shown["timers"] = [
            {"kind": t.kind, "name": t.name, "due_at": moment(t.due_at), "due_in": t.due_at - now}
            for t in instance.timers
        ]
    return shown


@sagas.command(
    "resume",
    epilog="""\b
Examples:
  eventbus sagas resume app.checkout:checkout o-1042
  eventbus sagas resume app.sagas:all --saga checkout o-1042 --yes
""",
)
@click.argument("target", metavar="MODULE:SAGA")
@click.argument("key")
@_saga_option
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def resume(target: str, key: str, name: str | None, yes: bool) -> None:
    """Run again the compensations of an instance in compensation_failed, with a fresh retry
    budget (the application's SagaWorker runs them). Fix what made them fail first."""
    saga = saga_of(target, name)

    async def main() -> SagaInstance[Any]:
        stuck = await saga.show(key)
        if stuck.status != COMPENSATION_FAILED:
            raise SagaNotResumable(saga.name, key, stuck.status)
        why = f" (last error: {stuck.last_error})" if stuck.last_error else ""
        confirm(f"Run the compensations of saga {saga.name!r} instance {key!r} again{why}?", yes)
        return await saga.resume(key)

    try:
        resumed: SagaInstance[Any] = _run(saga, main())
    except SagaNotFound as exc:
        raise _not_found(exc, target, name) from exc
    except SagaNotResumable as exc:
        raise fail(str(exc)) from exc
    left = ", ".join(reversed(resumed.compensations))
    click.echo(
        f"saga {saga.name!r} instance {key!r} is {resumed.status} again: the SagaWorker runs "
        f"{left or 'what is left'} next",
        err=True,
    )
