"""publish, tail, outbox, projections and the shared rules: examples in every --help, one
error line naming the fix, exit codes, passwords never printed."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from eventbus.cli.app import COMMANDS, cli
from eventbus.testing import wait_until
from tests.cli.support import Running, environment, eventbus


def _leaf_commands() -> list[list[str]]:
    found: list[list[str]] = []
    for name in sorted(COMMANDS):
        command = cli.get_command(click.Context(cli), name)
        assert command is not None
        if isinstance(command, click.Group):
            found += [[name, sub] for sub in sorted(command.commands)]
        else:
            found.append([name])
    return found


@pytest.mark.parametrize("path", _leaf_commands(), ids=" ".join)
def test_every_command_has_help_with_examples(path: list[str]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Examples:\n" in result.output
    assert f"eventbus {' '.join(path)} " in result.output.split("Examples:")[1]


@pytest.mark.parametrize(
    "url",
    ["redis://app:s3cret@127.0.0.1:1/0", "amqp://app:s3cret@127.0.0.1:1/", "kafka://127.0.0.1:1"],
)
def test_an_unreachable_broker_is_one_line_without_the_password(tmp_path: Path, url: str) -> None:
    result = eventbus("publish", "--broker", url, "a.b", "{}", cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # no driver log lines, no traceback
    assert lines[0].startswith("error: ")
    assert "s3cret" not in result.stderr
    assert "check that" in lines[0]


def test_a_missing_database_or_table_names_the_fix(tmp_path: Path) -> None:
    missing = eventbus(
        "outbox", "status", "--db", f"sqlite+aiosqlite:///{tmp_path}/no.db", cwd=tmp_path
    )
    assert missing.returncode == 1
    assert (
        missing.stderr == f"error: there is no SQLite database at '{tmp_path}/no.db': check --db\n"
    )
    (tmp_path / "empty.db").touch()
    empty = eventbus(
        "outbox", "status", "--db", f"sqlite+aiosqlite:///{tmp_path}/empty.db", cwd=tmp_path
    )
    assert empty.returncode == 1
    assert "no such table: eventbus_outbox; check that --db" in empty.stderr
    assert len(empty.stderr.splitlines()) == 1


def test_a_bad_url_names_the_schemes_and_a_usage_error_exits_2(tmp_path: Path) -> None:
    result = eventbus("publish", "--broker", "rediss2://u:pw@h/", "a.b", "{}", cwd=tmp_path)
    assert result.returncode == 1
    assert "use one of amqp://" in result.stderr
    assert "pw" not in result.stderr
    assert (
        eventbus("publish", "--broker", "memory://", "a.b", "{not json", cwd=tmp_path).returncode
        == 2
    )
    assert eventbus("dlq", "frobnicate", cwd=tmp_path).returncode == 2
    bad_db = eventbus("outbox", "status", "--db", "postgres://u:pw@h/db", cwd=tmp_path)
    assert bad_db.returncode == 1
    assert "postgresql+asyncpg://" in bad_db.stderr
    assert ":pw@" not in bad_db.stderr
    assert "Traceback" not in bad_db.stderr


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = eventbus("--debug", "dlq", "list", "--broker", "redix://u:pw@h/", cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "ConfigurationError: unknown broker URL" in result.stderr


@pytest.fixture(params=["redis", "rabbitmq", "kafka"])
def server(request: pytest.FixtureRequest) -> tuple[str, str, list[str]]:
    """(kind, URL, the --broker options) of one real broker."""
    kind = request.param
    request.applymarker(getattr(pytest.mark, kind))
    url = request.getfixturevalue(f"{kind}_url")
    options = ["--broker-option", f"prefix=ebtest:{uuid.uuid4().hex[:10]}:"] * (kind == "redis")
    return kind, url, ["--broker", url, *options]


def test_tail_prints_what_publish_sends_and_removes_its_group(
    tmp_path: Path, server: tuple[str, str, list[str]]
) -> None:
    kind, url, broker = server
    word = f"clitest{uuid.uuid4().hex[:8]}"
    event_type = f"{word}.order.placed"
    pattern = f"{word}.order.*" if kind == "rabbitmq" else event_type  # Redis has no routing
    tail = Running("tail", *broker, pattern, "--count", "1", cwd=tmp_path)
    try:
        group = tail.wait_for(r"in group '(eventbus-tail-\w+)'")[0].group(1)
        sent = eventbus(
            "publish",
            *broker,
            "--key",
            "o1",
            "--header",
            "tenant=acme",
            event_type,
            '{"order_id": "o1"}',
            cwd=tmp_path,
        )
        assert sent.returncode == 0, sent.stderr
        printed = json.loads(tail.wait_for(r"^\{.*\}$", stream="stdout", timeout=60)[0].group(0))
        assert tail.finish() == 0, tail.stderr
    finally:
        tail.stop()
    assert printed["id"] == sent.stdout.strip()
    assert printed["type"] == event_type
    assert printed["data"] == {"order_id": "o1"}
    assert printed["partitionkey"] == "o1"
    assert printed["tenant"] == "acme"
    assert "stays" not in tail.stderr
    assert not asyncio.run(_group_exists(kind, url, broker, group, event_type, pattern))


async def _group_exists(
    kind: str, url: str, broker: list[str], group: str, event_type: str, pattern: str
) -> bool:
    """Whether the broker still keeps anything for the tail's group."""
    if kind == "redis":
        import redis.asyncio as aioredis

        prefix = broker[-1].removeprefix("prefix=")
        client = aioredis.Redis.from_url(url)
        async with client:
            groups = await client.xinfo_groups(f"{prefix}{event_type}")
            await client.delete(f"{prefix}{event_type}")
        return any(g["name"].decode() == group for g in groups)
    if kind == "rabbitmq":
        import aio_pika
        import aiormq

        from eventbus.brokers.rabbitmq import queue_name

        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel()
            try:
                await channel.declare_queue(queue_name(group, pattern), passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                return False
            return True
    from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]

    from eventbus.brokers.kafka.topology import retry_group

    admin = AIOKafkaAdminClient(bootstrap_servers=url.removeprefix("kafka://"))
    await admin.start()
    try:  # the main group, and the group that reads its retry topics
        kept = {g[0] for g in await admin.list_consumer_groups()}
        return bool(kept & {group, retry_group(group, event_type)})
    finally:
        await admin.close()


OUTBOX_APP = textwrap.dedent(
    """
    import asyncio, sys
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
    from eventbus import Event, EventBus
    from eventbus.outbox import Outbox

    class Shipped(Event):
        event_type = sys.argv[3]
        parcel: int

    async def main() -> None:
        engine = create_async_engine(sys.argv[1])
        outbox = Outbox()
        await outbox.create_tables(engine)
        bus = EventBus(sys.argv[2], outbox=outbox, prefix=sys.argv[4])
        async with AsyncSession(engine) as session, session.begin():
            for n in range(3):
                await bus.publish(Shipped(parcel=n), session=session)
        await engine.dispose()

    asyncio.run(main())
    """
)


@pytest.mark.slow
@pytest.mark.redis
def test_outbox_status_then_relay_publishes_the_backlog(tmp_path: Path, redis_url: str) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path}/app.db"
    prefix = f"ebtest:{uuid.uuid4().hex[:10]}:"
    kind = f"clitest.shipped.{uuid.uuid4().hex[:8]}"
    (tmp_path / "stage.py").write_text(OUTBOX_APP)
    subprocess.run(
        [sys.executable, "stage.py", db, redis_url, kind, prefix],
        cwd=tmp_path,
        env=environment(tmp_path),
        check=True,
    )
    status = eventbus("outbox", "status", "--db", db, "--json", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    backlog = json.loads(status.stdout)
    assert backlog["pending"] == 3
    assert backlog["dead"] == 0
    assert backlog["oldest_age_seconds"] > 0
    assert eventbus("outbox", "status", "--db", db, "--max-dead", "0", cwd=tmp_path).returncode == 0
    old = eventbus("outbox", "status", "--db", db, "--max-age", "0", cwd=tmp_path)
    assert old.returncode == 1
    assert "over --max-age 0s" in old.stderr

    broker = ["--broker", redis_url, "--broker-option", f"prefix={prefix}"]
    relayed = eventbus("outbox", "relay", "--db", db, *broker, "--once", cwd=tmp_path)
    assert relayed.returncode == 0, relayed.stderr
    assert "published 3 row(s)" in relayed.stderr
    assert (
        json.loads(eventbus("outbox", "status", "--db", db, "--json", cwd=tmp_path).stdout)[
            "pending"
        ]
        == 0
    )

    running = Running("outbox", "relay", "--db", db, *broker, cwd=tmp_path)
    try:
        running.wait_for("outbox relay ready")
        running.signal(signal.SIGTERM)
        assert running.finish() == 0, running.stderr
    finally:
        running.stop()


PROJECTION_APP = textwrap.dedent(
    """
    import os
    from eventbus import Event
    from sqlalchemy.ext.asyncio import create_async_engine
    from eventbus.eventstore import EventStore, Projection, ProjectionContext, ProjectionRunner

    class Deposited(Event):
        amount: int

    totals: dict[str, int] = {}
    balance = Projection("balance")

    @balance.on(Deposited)
    async def deposited(event: Deposited, ctx: ProjectionContext) -> None:
        totals["sum"] = totals.get("sum", 0) + event.amount

    @balance.on_reset
    async def reset() -> None:
        totals.clear()

    store = EventStore(create_async_engine(os.environ["CLIAPP_DB"]))
    runners = [ProjectionRunner(store, balance)]
    """
)


@pytest.mark.slow
def test_projections_status_and_rebuild(tmp_path: Path) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path}/events.db"
    (tmp_path / "ledger.py").write_text(PROJECTION_APP)
    (tmp_path / "fill.py").write_text(
        textwrap.dedent(
            """
        import asyncio
        from ledger import Deposited, runners, store

        async def main() -> None:
            await store.create_tables()
            await runners[0].create_tables()
            for n in range(5):
                await store.append(f"account-{n}", [Deposited(amount=n)], expected_version=0)
            await runners[0].run_once()
            await store.append("account-9", [Deposited(amount=9)], expected_version=0)
            await store.engine.dispose()

        asyncio.run(main())
        """
        )
    )
    env = {"CLIAPP_DB": db}
    subprocess.run(
        [sys.executable, "fill.py"], cwd=tmp_path, env=environment(tmp_path, env), check=True
    )
    status = eventbus("projections", "status", "ledger:runners", "--json", cwd=tmp_path, env=env)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout) == [{"name": "balance", "position": 5, "head": 6, "lag": 1}]
    alarm = eventbus(
        "projections", "status", "ledger:runners", "--max-lag", "0", cwd=tmp_path, env=env
    )
    assert alarm.returncode == 1
    assert "balance" in alarm.stderr

    refused = eventbus("projections", "rebuild", "ledger:runners", "balance", cwd=tmp_path, env=env)
    assert refused.returncode == 1
    assert "--yes" in refused.stderr
    rebuilt = eventbus(
        "projections", "rebuild", "ledger:runners", "balance", "--yes", cwd=tmp_path, env=env
    )
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "6 event(s) applied" in rebuilt.stderr
    status = eventbus("projections", "status", "ledger:runners", "--json", cwd=tmp_path, env=env)
    assert json.loads(status.stdout)[0]["lag"] == 0
    unknown = eventbus(
        "projections", "rebuild", "ledger:runners", "nope", "--yes", cwd=tmp_path, env=env
    )
    assert unknown.returncode == 1
    assert "there are: balance" in unknown.stderr

    reset = eventbus(
        "projections",
        "rebuild",
        "ledger:runners",
        "balance",
        "--yes",
        "--no-catch-up",
        cwd=tmp_path,
        env=env,
    )
    assert reset.returncode == 0, reset.stderr
    assert _lag(tmp_path, env) == 6
    following = Running("projections", "run", "ledger:runners", cwd=tmp_path, env=env)
    try:
        following.wait_for("projections running: balance")

        async def caught_up() -> bool:
            return await asyncio.to_thread(_lag, tmp_path, env) == 0

        asyncio.run(wait_until(caught_up, timeout=30))
    finally:
        following.signal(signal.SIGTERM)
        assert following.finish() == 0, following.stderr
        following.stop()


def _lag(cwd: Path, env: dict[str, str]) -> int:
    status = eventbus("projections", "status", "ledger:runners", "--json", cwd=cwd, env=env)
    assert status.returncode == 0, status.stderr
    lag: int = json.loads(status.stdout)[0]["lag"]
    return lag
