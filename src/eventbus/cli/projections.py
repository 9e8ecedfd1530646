"""``eventbus projections status|rebuild|run``: the read models kept from the event store.

The commands take ``MODULE:RUNNERS``, the application's
:class:`~eventbus.eventstore.ProjectionRunner` objects: one runner, a list or dict of them,
or a function of no arguments that returns those. The runner knows its store, its
projection and where its checkpoint is, so the command needs nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from eventbus.cli.common import confirm, echo_json, fail, load_all, print_table, run
from eventbus.cli.signals import LOG_LEVELS, configure_logging, on_signals
from eventbus.eventstore import ProjectionRunner

__all__ = ["projections"]

log = logging.getLogger("eventbus.cli")
PROGRESS_INTERVAL = 0.2


@click.group(
    epilog="""\b
Examples:
  eventbus projections status app.read_models:runners
  eventbus projections status app.read_models:runners --json --max-lag 1000
  eventbus projections rebuild app.read_models:runners order-totals --yes
  eventbus projections run app.read_models:runners
"""
)
def projections() -> None:
    """See how far each projection is behind its event store, rebuild one, or run them."""


def runners_of(target: str) -> list[ProjectionRunner]:
    """The runners MODULE:RUNNERS names (a runner, a list or dict of them, or a factory)."""
    return load_all(target, ProjectionRunner, what="runners")


@contextlib.asynccontextmanager
async def _engines_closed(runners: Sequence[ProjectionRunner]) -> AsyncIterator[None]:
    try:
        yield
    finally:
        engines = {id(e): e for r in runners for e in _engines(r)}
        for engine in engines.values():
            await engine.dispose()


def _engines(runner: ProjectionRunner) -> list[Any]:
    found = [getattr(runner.store, "engine", None), getattr(runner.checkpoints, "engine", None)]
    return [engine for engine in found if engine is not None]


def _chosen(runners: list[ProjectionRunner], names: Sequence[str]) -> list[ProjectionRunner]:
    by_name = {r.projection.name: r for r in runners}
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise fail(f"no projection {unknown[0]!r}; there are: {', '.join(sorted(by_name))}")
    return [by_name[name] for name in names] if names else runners


@projections.command(
    "status",
    epilog="""\b
Examples:
  eventbus projections status app.read_models:runners
  eventbus projections status app.read_models:runners order-totals --json --max-lag 1000
""",
)
@click.argument("target", metavar="MODULE:RUNNERS")
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("--json", "as_json", is_flag=True, help="JSON on stdout, for scripts.")
@click.option(
    "--max-lag",
    type=click.IntRange(min=0),
    help="Exit 1 when a projection is more than this many events behind (for alerts).",
)
def status(target: str, names: Sequence[str], as_json: bool, max_lag: int | None) -> None:
    """Each projection's checkpoint, the store's last position, and the lag between them."""
    runners = _chosen(runners_of(target), names)

    async def main() -> list[dict[str, Any]]:
        async with _engines_closed(runners):
            rows = []
            for runner in runners:
                position = await runner.checkpoints.load(runner.projection.name)
                head, lag = await runner.checkpoints.behind(runner.store, position)
                rows.append(
                    {"name": runner.projection.name, "position": position, "head": head, "lag": lag}
                )
            return rows

    rows = run(main())
    if as_json:
        echo_json(rows)
    else:
        table = Table("PROJECTION", "POSITION", "HEAD", "LAG")
        for row in rows:
            table.add_row(row["name"], str(row["position"]), str(row["head"]), str(row["lag"]))
        print_table(table)
    behind = [row["name"] for row in rows if max_lag is not None and row["lag"] > max_lag]
    if behind:
        raise fail(f"more than {max_lag} events behind: {', '.join(behind)}")


@projections.command(
    "rebuild",
    epilog="""\b
Examples:
  eventbus projections rebuild app.read_models:runners order-totals
  eventbus projections rebuild app.read_models:runners order-totals --yes --no-catch-up
""",
)
@click.argument("target", metavar="MODULE:RUNNERS")
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option(
    "--no-catch-up",
    is_flag=True,
    help="Only clear the read model and reset the checkpoint; a running worker applies the "
    "events again.",
)
def rebuild(target: str, names: Sequence[str], yes: bool, no_catch_up: bool) -> None:
    """Clear the read model of each NAME and apply every event again, with a progress bar.

    The projection's reset hook and the checkpoint's return to 0 commit together; the events
    are then applied in batches, each committed with its checkpoint.
    """
    runners = _chosen(runners_of(target), names)
    listed = ", ".join(repr(r.projection.name) for r in runners)
    confirm(f"Clear the read model of {listed} and apply every event again?", yes)
    run(_rebuild(runners, not no_catch_up))


async def _rebuild(runners: Sequence[ProjectionRunner], catch_up: bool) -> None:
    console = Console(stderr=True)
    async with _engines_closed(runners):
        for runner in runners:
            name = runner.projection.name
            await runner.rebuild()
            if not catch_up:
                click.echo(f"{name}: cleared; the checkpoint is back at 0", err=True)
                continue
            head, _ = await runner.checkpoints.behind(runner.store, 0)
            columns = (TextColumn(name), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
            with Progress(*columns, console=console, disable=not console.is_terminal) as bar:
                task = bar.add_task(name, total=head)
                applying = asyncio.get_running_loop().create_task(runner.run_once())
                while not applying.done():
                    await asyncio.wait({applying}, timeout=PROGRESS_INTERVAL)
                    bar.update(task, completed=min(runner.position, head))
                applied = applying.result()
            click.echo(f"{name}: rebuilt, {applied} event(s) applied", err=True)


@projections.command(
    "run",
    epilog="""\b
Examples:
  eventbus projections run app.read_models:runners
  eventbus projections run app.read_models:runners order-totals --log-level debug
""",
)
@click.argument("target", metavar="MODULE:RUNNERS")
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False), default="info")
def run_command(target: str, names: Sequence[str], log_level: str) -> None:
    """Keep the projections up to date until SIGTERM or SIGINT (the batch in progress
    commits or rolls back, then exit 0)."""
    configure_logging(log_level)
    runners = _chosen(runners_of(target), names)

    async def main() -> None:
        stopping = asyncio.Event()
        on_signals(stopping)
        async with _engines_closed(runners):
            for runner in runners:
                await runner.start()
            log.info("projections running: %s", ", ".join(r.projection.name for r in runners))
            try:
                await stopping.wait()
            finally:
                for runner in runners:
                    await runner.stop()
        log.info("projections stopped")

    run(main())
