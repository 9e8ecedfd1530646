"""Logging to stderr and the two-signal stop that every long-running command shares."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from eventbus.cli.common import EXIT_FAILURE
from eventbus.cli.supervisor import WORKER_ENV

__all__ = ["LOG_LEVELS", "configure_logging", "on_signals"]

log = logging.getLogger("eventbus.cli")

LOG_LEVELS = ("debug", "info", "warning", "error")


def configure_logging(level: str) -> None:
    """Log records of every logger at ``level`` and above to stderr, one line each."""
    worker = os.environ.get(WORKER_ENV)
    name = f"worker-{worker}" if worker else "eventbus"
    logging.basicConfig(
        stream=sys.stderr,
        level=level.upper(),
        format=f"%(asctime)s %(levelname)s [{name} %(process)d] %(name)s: %(message)s",
        force=True,
    )


def on_signals(stopping: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    received: list[int] = []

    def on_signal(signum: int) -> None:
        received.append(signum)
        name = signal.Signals(signum).name
        if len(received) == 1:
            log.info("%s: draining the running handlers (again to stop at once)", name)
            stopping.set()
            return
        log.warning("%s again: stopping at once; the broker redelivers what was running", name)
        logging.shutdown()
        os._exit(EXIT_FAILURE)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
