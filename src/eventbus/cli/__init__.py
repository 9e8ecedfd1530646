"""The ``eventbus`` command: run workers; operate dead letters, the outbox, projections, sagas
and webhooks; publish, tail.

Each command lives in a module of its own and is loaded only when it is asked for (so
``eventbus publish`` does not import SQLAlchemy). Adding a command is a module with one
``click`` command or group in it, and one line in ``eventbus.cli.app.COMMANDS``. See
``docs/cli.md``.
"""

from __future__ import annotations

import importlib
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    """The console script ``eventbus`` (``argv`` defaults to ``sys.argv[1:]``)."""
    try:
        importlib.import_module("click")
        importlib.import_module("rich")
    except ImportError:
        sys.stderr.write('error: the eventbus command needs: pip install "eventbus[cli]"\n')
        raise SystemExit(1) from None
    importlib.import_module("eventbus.cli.app").main(argv)
