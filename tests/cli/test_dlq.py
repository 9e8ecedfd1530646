"""``eventbus dlq`` on every broker: a real process lists and replays what a running bus
dead-lettered, with the event ids kept; purge asks first. ``memory://`` holds nothing
between processes, so it is driven in-process, through click's runner."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from eventbus import Context, Event, EventBus, PermanentError
from eventbus.cli.app import cli
from eventbus.testing import wait_until
from tests.cli.support import eventbus

BROKERS = ["redis", "rabbitmq", "kafka"]


@pytest.fixture(params=BROKERS)
def broker(
    request: pytest.FixtureRequest,
) -> Iterator[tuple[str, list[str], dict[str, Any]]]:
    """(URL, the command line's --broker options, the bus's options) of one real broker."""
    kind = request.param
    request.applymarker(getattr(pytest.mark, kind))
    url = request.getfixturevalue(f"{kind}_url")
    if kind == "redis":
        prefix = f"ebtest:{uuid.uuid4().hex[:10]}:"  # deleted by _cleanup
        yield url, ["--broker", url, "--broker-option", f"prefix={prefix}"], {"prefix": prefix}
    else:
        yield url, ["--broker", url], {}


class PaymentDeclined(PermanentError):
    """Never retried: dead-lettered on the first failure."""


class _Failing:
    """A handler that refuses every event until it is told to accept them."""

    def __init__(self) -> None:
        self.failing = True
        self.handled: list[str] = []

    async def __call__(self, event: Event, ctx: Context) -> None:
        if self.failing:
            raise PaymentDeclined("the payment service said no")
        self.handled.append(ctx.envelope.id)


def _event_class() -> Any:
    class Charged(Event):
        event_type = f"clitest.charged.{uuid.uuid4().hex[:8]}"
        amount: int

    return Charged


@pytest.mark.anyio
async def test_list_then_replay_keeps_the_event_ids(
    broker: tuple[str, list[str], dict[str, Any]], tmp_path: Path
) -> None:
    url, args, options = broker
    group = f"clitest.charge.{uuid.uuid4().hex[:8]}"
    charged, handler = _event_class(), _Failing()
    if url.startswith("amqp"):  # its DLQs are named after the subscriptions: --app names them
        refused = await _eventbus("dlq", "list", *args, cwd=tmp_path)
        assert refused.returncode == 1
        assert "pass --app MODULE:BUS" in refused.stderr
        (tmp_path / "billing.py").write_text(
            _APP.format(url=url, type=charged.event_type, group=group)
        )
        args = ["--app", "billing:bus"]
    bus = EventBus(url, service="clitest", **options)
    bus.subscribe(charged, group=group)(handler)
    async with bus:
        sent = [(await bus.publish(charged(amount=n))).id for n in range(3)]
        await wait_until(lambda: _count(bus, group, 3), timeout=60)

        listed = await _eventbus("dlq", "list", *args, "--group", group, "--json", cwd=tmp_path)
        assert listed.returncode == 0, listed.stderr
        records = json.loads(listed.stdout)
        assert sorted(r["event_id"] for r in records) == sorted(sent)
        assert {r["error_type"].rsplit(".", 1)[-1] for r in records} == {"PaymentDeclined"}
        assert {r["group"] for r in records} == {group}

        shown = await _eventbus("dlq", "show", records[0]["id"], *args, "--json", cwd=tmp_path)
        assert shown.returncode == 0, shown.stderr
        detail = json.loads(shown.stdout)
        assert detail["event_id"] == records[0]["event_id"]
        assert '"amount":' in detail["body"]  # the message as it arrived (structured on Redis)

        handler.failing = False
        replayed = await _eventbus(
            "dlq",
            "replay",
            *args,
            "--group",
            group,
            "--error-type",
            "PaymentDeclined",
            "--json",
            cwd=tmp_path,
        )
        assert replayed.returncode == 0, replayed.stderr
        assert len(json.loads(replayed.stdout)["replayed"]) == 3
        await wait_until(lambda: sorted(handler.handled) == sorted(sent), timeout=60)
        assert await bus.dead_letters.list(group=group) == []
    await _cleanup(bus)


_APP = """
from eventbus import Event, EventBus

class Charged(Event):
    event_type = "{type}"
    amount: int

bus = EventBus("{url}", service="billing")

@bus.subscribe(Charged, group="{group}")
async def charge(event: Charged) -> None: ...
"""


async def _count(bus: EventBus, group: str, count: int) -> bool:
    return len(await bus.dead_letters.list(group=group)) >= count


async def _eventbus(*args: str, cwd: Path) -> Any:
    """The command in a process of its own, while this test's bus keeps running."""
    return await asyncio.to_thread(eventbus, *args, cwd=cwd)


async def _cleanup(bus: EventBus) -> None:
    """Delete what the test left on the shared server (the drivers are imported only by the
    broker's own test run)."""
    broker: Any = bus.broker
    if type(broker).__name__ == "RedisBroker":
        from tests.redissupport import delete_prefix

        await delete_prefix(broker.url, broker.keys.prefix)
    if type(broker).__name__ == "RabbitMQBroker":
        from tests.brokers.test_rabbitmq import _cleanup as delete_queues

        await delete_queues(broker.url, [broker])


# ---------------------------------------------------------------- in-process: memory://
@pytest.fixture
def memory_dead_letters() -> tuple[str, str, list[str], EventBus]:
    """A named memory:// broker with two dead letters in a fresh group."""
    url = f"memory://clitest-{uuid.uuid4().hex[:8]}"
    group = "clitest.charge"
    charged = _event_class()
    bus = EventBus(url, service="clitest")
    bus.subscribe(charged, group=group)(_Failing())

    async def fill() -> list[str]:
        async with bus:
            sent = [(await bus.publish(charged(amount=n))).id for n in range(2)]
            await bus.drain()
        return sent

    return url, group, asyncio.run(fill()), bus


def test_memory_dead_letters_are_listed_replayed_and_purged_in_process(
    memory_dead_letters: tuple[str, str, list[str], EventBus],
) -> None:
    url, group, sent, _ = memory_dead_letters  # the bus keeps the named broker alive
    runner = CliRunner()
    listed = runner.invoke(cli, ["dlq", "list", "--broker", url, "--json"])
    assert listed.exit_code == 0, listed.output
    records = json.loads(listed.stdout)
    assert sorted(r["event_id"] for r in records) == sorted(sent)

    refused = runner.invoke(cli, ["dlq", "purge", "--broker", url, "--group", group])
    assert refused.exit_code == 1
    assert "pass --yes" in refused.stderr
    assert (
        len(json.loads(runner.invoke(cli, ["dlq", "list", "--broker", url, "--json"]).stdout)) == 2
    )

    replayed = runner.invoke(cli, ["dlq", "replay", records[0]["id"], "--broker", url])
    assert replayed.exit_code == 0, replayed.output
    assert "replayed 1 dead letter(s)" in replayed.stderr
    purged = runner.invoke(cli, ["dlq", "purge", "--broker", url, "--yes", "--json"])
    assert purged.exit_code == 0, purged.output
    assert json.loads(purged.stdout) == {"purged": 1}


def test_replay_without_a_choice_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["dlq", "replay", "--broker", "memory://"])
    assert result.exit_code == 2
    assert "--all" in result.stderr
