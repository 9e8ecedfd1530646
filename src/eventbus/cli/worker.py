"""``eventbus worker run``: the bus's consumers (and the outbox relay) until a signal.

The first SIGTERM or SIGINT stops fetching, lets the handlers that are running finish within
``--shutdown-timeout`` (those still running then are handed back to the broker for
redelivery: nothing is lost) and exits 0. A second signal exits 1 at once; what was running is
redelivered by the broker. ``--workers N`` runs N such processes under
:mod:`eventbus.cli.supervisor`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import sys
from typing import Any

import click

from eventbus.bus import EventBus
from eventbus.cli.common import EXIT_OK, database, fail, load, run
from eventbus.cli.signals import LOG_LEVELS, configure_logging, on_signals
from eventbus.cli.supervisor import SUPERVISOR_ENV, Supervisor
from eventbus.redact import redact_url

__all__ = ["serve", "worker"]

log = logging.getLogger("eventbus.cli")

PARENT_CHECK_INTERVAL = 1.0
"""How often a supervised worker checks that its supervisor is still alive."""


@click.group()
def worker() -> None:
    """Run the consumers of an application's bus."""


@worker.command(
    "run",
    epilog="""\b
Examples:
  eventbus worker run app.main:bus
  eventbus worker run app.main:bus --workers 4 --shutdown-timeout 60
  eventbus worker run app.main:create_bus --relay --db postgresql+asyncpg://app@db/app
""",
)
@click.argument("target", metavar="MODULE:BUS")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Processes to run; more than 1 runs them under a supervisor that restarts any that "
    "dies and passes signals on.",
)
@click.option(
    "--shutdown-timeout",
    type=click.FloatRange(min=0),
    default=None,
    help="Seconds running handlers get to finish after SIGTERM/SIGINT (default: the bus's "
    "shutdown_timeout, 30).",
)
@click.option("--relay", is_flag=True, help="Also run the outbox relay (needs --db).")
@click.option(
    "--db", envvar="EVENTBUS_DB", metavar="URL", help="The outbox's database (or EVENTBUS_DB)."
)
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="info",
    show_default=True,
    help="Log to stderr from this level up.",
)
def run_command(
    target: str,
    workers: int,
    shutdown_timeout: float | None,
    relay: bool,
    db: str | None,
    log_level: str,
) -> None:
    """Run the subscriptions of the bus MODULE:BUS until SIGTERM or SIGINT.

    MODULE:BUS names an EventBus (or a function that returns one), looked up from the
    current directory: app.main:bus is the attribute bus of the module app.main. The first
    signal drains (exit 0), a second one stops at once (exit 1).
    """
    if relay and not db:
        raise click.UsageError("--relay publishes the outbox of a database: give --db URL")
    configure_logging(log_level)
    bus = load(target, EventBus)  # in the supervisor too: a bad path fails once, here
    if not bus.subscriptions and not relay:
        raise fail(f"{target} has no subscriptions, so a worker has nothing to run")
    if relay and bus.outbox is None:
        raise fail(
            f"{target} has no outbox for --relay to publish: create it with "
            "EventBus(..., outbox=Outbox()) (from eventbus.outbox import Outbox)"
        )
    if workers > 1:
        debug = ["--debug"] * bool(click.get_current_context().find_root().params.get("debug"))
        command = [sys.executable, "-m", "eventbus.cli", *debug, "worker", "run", target]
        command += ["--log-level", log_level]
        if shutdown_timeout is not None:
            command += ["--shutdown-timeout", str(shutdown_timeout)]
        env = dict(os.environ)
        if relay and db:
            command.append("--relay")
            env["EVENTBUS_DB"] = db  # not on the command line, where ps would show it
        timeout = bus.shutdown_timeout if shutdown_timeout is None else shutdown_timeout
        raise SystemExit(Supervisor(command, workers, env, timeout).run())
    raise SystemExit(run(serve(bus, shutdown_timeout, db if relay else None)))


async def serve(bus: EventBus, shutdown_timeout: float | None, relay_db: str | None) -> int:
    """Run ``bus`` (and a relay on ``relay_db``) until a signal; the exit code."""
    stopping = asyncio.Event()
    on_signals(stopping)
    engine: Any = None
    outbox_relay: Any = None
    await bus.start()
    try:
        if relay_db is not None:
            engine = database(relay_db)
            outbox_relay = importlib.import_module("eventbus.outbox").OutboxRelay(engine, bus)
            await outbox_relay.start()
        log.info(
            "worker ready: %d subscription(s) on %s%s",
            len(bus.subscriptions),
            bus.broker,
            f", outbox relay on {redact_url(relay_db)}" if relay_db else "",
        )
        watch = asyncio.get_running_loop().create_task(_watch_supervisor(stopping))
        await stopping.wait()
        watch.cancel()
    finally:
        if outbox_relay is not None:
            await outbox_relay.stop()
        if engine is not None:
            await engine.dispose()
        await bus.stop(timeout=shutdown_timeout)
    log.info("worker stopped: every handler that was running has finished or was handed back")
    return EXIT_OK


async def _watch_supervisor(stopping: asyncio.Event) -> None:
    """Under a supervisor: stop (draining) if it dies, instead of running on orphaned."""
    supervisor = os.environ.get(SUPERVISOR_ENV)
    if not supervisor:
        return
    while os.getppid() == int(supervisor):  # a re-parenting has no event: it is polled
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stopping.wait(), PARENT_CHECK_INTERVAL)
            return
    log.warning("the supervisor (pid %s) is gone: draining and stopping", supervisor)
    stopping.set()
