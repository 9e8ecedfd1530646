"""``eventbus asyncapi``: the document of an application's bus, as a user's shell runs it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.cli.support import eventbus
from tests.test_asyncapi import refs, resolve, validator

__all__ = ["validator"]  # the official schema, as the export tests load it

APP = """
from eventbus import Event, EventBus, Router


class OrderPlaced(Event):
    event_type = "shop.order.placed"
    order_id: str


class OrderShipped(Event):
    event_type = "shop.order.shipped"
    order_id: str


router = Router(publishes=[OrderShipped])


@router.subscribe(OrderPlaced, group="shipping")
async def ship(event: OrderPlaced) -> None: ...


bus = EventBus("amqp://app:secret@rabbit.internal:5672/", service="shipping", routers=[router])
"""


@pytest.fixture
def app(tmp_path: Path) -> Path:
    (tmp_path / "shipping_app.py").write_text(APP)
    return tmp_path


def check(document: dict[str, Any], schema: jsonschema.Draft7Validator) -> None:
    schema.validate(document)
    for ref in refs(document):
        resolve(document, ref)


def test_json_on_standard_output_is_valid_asyncapi(
    app: Path, validator: jsonschema.Draft7Validator
) -> None:
    run = eventbus("asyncapi", "shipping_app:bus", cwd=app)
    assert run.returncode == 0, run.stderr
    document = json.loads(run.stdout)
    check(document, validator)
    assert set(document["channels"]) >= {"shop.order.placed", "shop.order.shipped"}
    actions = sorted(op["action"] for op in document["operations"].values())
    assert actions.count("receive") >= 1
    assert "send" in actions
    assert "secret" not in run.stdout  # the broker URL's password is never written


def test_a_yaml_file_by_its_name_and_the_internal_channels_left_out(
    app: Path, validator: jsonschema.Draft7Validator
) -> None:
    with_internal = json.loads(eventbus("asyncapi", "shipping_app:bus", cwd=app).stdout)
    run = eventbus("asyncapi", "shipping_app:bus", "-o", "api.yaml", "--no-internal",
                   "--title", "Shipping", "--version", "2.1.0", cwd=app)  # fmt: skip
    assert run.returncode == 0, run.stderr
    document = yaml.safe_load((app / "api.yaml").read_text())
    check(document, validator)
    assert document["info"]["title"] == "Shipping"
    assert document["info"]["version"] == "2.1.0"
    assert len(document["channels"]) < len(with_internal["channels"])  # no retry/DLQ queues


def test_a_target_that_is_not_a_bus_is_one_line(app: Path) -> None:
    run = eventbus("asyncapi", "shipping_app:router", cwd=app)
    assert run.returncode == 1
    assert run.stderr.count("\n") == 1
    assert "not a EventBus" in run.stderr or "not an EventBus" in run.stderr
    assert "Traceback" not in run.stderr
