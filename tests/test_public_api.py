"""The documented public names (docs/api.md) and each module's ``__all__`` agree."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

API_PAGE = Path(__file__).parent.parent / "docs" / "api.md"


def documented() -> dict[str, set[str]]:
    sections: dict[str, set[str]] = {}
    current = None
    for line in API_PAGE.read_text().splitlines():
        heading = re.match(r"^## `([\w.]+)`", line)
        if heading:
            current = sections.setdefault(heading.group(1), set())
        elif current is not None and (row := re.match(r"^\| `(\w+)` \|", line)):
            current.add(row.group(1))
    return sections


MODULES = [
    "eventbus",
    "eventbus.aggregate",
    "eventbus.asyncapi",
    "eventbus.eventstore",
    "eventbus.fastapi",
    "eventbus.middleware",
    "eventbus.otel",
    "eventbus.outbox",
    "eventbus.redact",
    "eventbus.sagas",
    "eventbus.testing",
    "eventbus.testing.aggregates",
    "eventbus.testing.eventstore",
    "eventbus.testing.sagas",
    "eventbus.testing.telemetry",
    "eventbus.upcasting",
    "eventbus.webhooks",
    "eventbus.webhooks.asgi",
    "eventbus.webhooks.dependency",
    "eventbus.webhooks.telemetry",
]


@pytest.mark.parametrize("module", MODULES)
def test_all_matches_the_documented_names(module: str) -> None:
    names = set(importlib.import_module(module).__all__)
    assert names == documented()[module]


@pytest.mark.parametrize("module", MODULES)
def test_every_public_name_exists(module: str) -> None:
    imported = importlib.import_module(module)
    for name in imported.__all__:
        assert getattr(imported, name) is not None, name


def test_import_needs_no_extras() -> None:
    """``import eventbus`` must not import any broker driver (they are extras)."""
    import subprocess
    import sys

    code = (
        "import sys, eventbus, eventbus.testing, eventbus.middleware, eventbus.eventstore\n"
        "import eventbus.testing.eventstore, eventbus.sagas, eventbus.testing.sagas\n"
        "loaded = {m.split('.')[0] for m in sys.modules}\n"
        "print(sorted(loaded & {'aiokafka', 'aio_pika', 'redis', 'sqlalchemy', 'opentelemetry'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
