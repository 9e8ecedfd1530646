"""``eventbus asyncapi``: the AsyncAPI 3.0 document of an application's bus."""

from __future__ import annotations

from pathlib import Path

import click

from eventbus.asyncapi import asyncapi_document, to_json, to_yaml
from eventbus.bus import EventBus
from eventbus.cli.common import load

__all__ = ["asyncapi"]


@click.command(
    epilog="""\b
Examples:
  eventbus asyncapi app.main:bus                       # JSON on standard output
  eventbus asyncapi app.main:bus -o asyncapi.yaml      # YAML, chosen by the file name
  eventbus asyncapi app.main:create_bus --title Shop --version 2.1.0 --no-internal
"""
)
@click.argument("target", metavar="MODULE:BUS")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
    help="Write to this file (.yaml/.yml for YAML, else JSON) instead of standard output.",
)  # fmt: skip
@click.option("--format", "form", type=click.Choice(["json", "yaml"]), help="Force the format.")
@click.option("--title", help="The API's title (default: the bus's service name).")
@click.option("--version", "api_version", default="1.0.0", show_default=True,
              help="The version of the API being described.")  # fmt: skip
@click.option("--internal/--no-internal", default=True, show_default=True,
              help="Document the retry and dead-letter channels the adapter keeps.")  # fmt: skip
def asyncapi(
    target: str,
    output: Path | None,
    form: str | None,
    title: str | None,
    api_version: str,
    internal: bool,
) -> None:
    """Print the AsyncAPI 3.0 document of the bus MODULE:BUS.

    One channel per destination, a receive operation per subscription, a send operation per
    event the routers declare they publish, the payloads as JSON Schema and the CloudEvents
    headers as the broker carries them. The broker is not contacted; its URL becomes the
    server, without credentials.
    """
    bus = load(target, EventBus)
    document = asyncapi_document(bus, title=title, version=api_version, internal_channels=internal)
    if form is None:
        form = "yaml" if output is not None and output.suffix in (".yaml", ".yml") else "json"
    text = to_yaml(document) if form == "yaml" else to_json(document)
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text)
        click.echo(f"wrote {output} ({len(document['channels'])} channels)", err=True)
