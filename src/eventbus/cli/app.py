"""The root ``eventbus`` group: the commands by name, and one line for every failure."""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

import click

from eventbus.cli.common import EXIT_FAILURE, report

__all__ = ["COMMANDS", "cli", "main"]

COMMANDS: dict[str, str] = {
    "asyncapi": "eventbus.cli.asyncapi:asyncapi",
    "worker": "eventbus.cli.worker:worker",
    "dlq": "eventbus.cli.dlq:dlq",
    "outbox": "eventbus.cli.outbox:outbox",
    "projections": "eventbus.cli.projections:projections",
    "sagas": "eventbus.cli.sagas:sagas",
    "webhooks": "eventbus.cli.webhooks:webhooks",
    "publish": "eventbus.cli.messages:publish",
    "tail": "eventbus.cli.messages:tail",
}
"""Command name → ``"module:attribute"`` of its ``click`` command, imported on first use."""


class _Commands(click.Group):
    """The root group: loads commands by name, and turns every failure into one line."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, _, attribute = target.partition(":")
        command: click.Command = getattr(importlib.import_module(module), attribute)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            if ctx.find_root().params.get("debug"):
                raise
            report(exc)
            ctx.exit(EXIT_FAILURE)


@click.group(
    cls=_Commands,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="""\b
Examples:
  eventbus worker run app.main:bus --workers 4
  eventbus dlq list --broker redis://localhost:6379/0
  eventbus outbox status --db postgresql+asyncpg://app@db/app
  eventbus sagas list app.checkout:checkout --status compensation_failed
  eventbus webhooks attempts --db postgresql+asyncpg://app@db/app
  eventbus publish --broker amqp://localhost/ shop.order.placed '{"order_id": "o1"}'

Exit codes: 0 ok, 1 failure (one line on stderr says why), 2 bad usage.
""",
)
@click.option(
    "--debug",
    is_flag=True,
    envvar="EVENTBUS_DEBUG",
    help="Show the full traceback of a failure (also EVENTBUS_DEBUG=1).",
)
@click.version_option(package_name="eventbus", prog_name="eventbus")
def cli(debug: bool) -> None:
    """Run eventbus workers and operate the dead letters, the outbox, the projections, the
    sagas and the webhooks."""
    # A one-shot command speaks through its output and its one error line: the drivers' own
    # log records (a refused connection, logged before it is raised) would be noise. With
    # --debug every record shows; `worker run` and the other long-running commands configure
    # logging themselves (--log-level).
    if debug:
        logging.basicConfig(stream=sys.stderr, level=logging.DEBUG, force=True)
    else:
        logging.basicConfig(handlers=[logging.NullHandler()], force=True)


def main(argv: list[str] | None = None) -> None:
    """Run the command line (``argv`` defaults to ``sys.argv[1:]``)."""
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # app.module:bus is looked up from the current directory
    cli.main(args=argv, prog_name="eventbus")
