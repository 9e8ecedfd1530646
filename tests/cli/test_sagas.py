"""``eventbus sagas list|show|resume`` against a saga stored with ``SqlSagaStore`` on SQLite
and PostgreSQL: what an operator sees, and a stuck instance resumed from the command line and
compensated by the application's worker."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from eventbus import EventBus
from eventbus.sagas import COMPENSATED, Saga, SagaWorker, SqlSagaStore
from tests.cli import sagaapp
from tests.cli.sagaapp import Closed, Opened, Ticket
from tests.cli.support import eventbus

APP = "tests.cli.sagaapp:sagas"


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """``CLIAPP_DB`` and ``CLIAPP_PREFIX`` of a database holding three ticket instances: t-1
    waiting (a timer pending), t-2 stuck in compensation_failed, t-3 completed."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"
    else:
        request.applymarker(pytest.mark.postgres)
        url = request.getfixturevalue("postgres_url")
    env = {"CLIAPP_DB": url, "CLIAPP_PREFIX": uuid.uuid4().hex[:10]}
    asyncio.run(_stage(env))
    yield env
    asyncio.run(_drop(env))


def _store(env: dict[str, str]) -> tuple[Saga[Ticket], SqlSagaStore]:
    built = sagaapp.build(env["CLIAPP_DB"], env["CLIAPP_PREFIX"])
    return built["ticket"], cast(SqlSagaStore, built["ticket"].store)


async def _stage(env: dict[str, str]) -> None:
    built = sagaapp.build(env["CLIAPP_DB"], env["CLIAPP_PREFIX"])
    store = cast(SqlSagaStore, built["ticket"].store)
    await store.outbox.create_tables(store.engine)
    await store.create_tables()
    bus = EventBus("memory://", service="helpdesk", outbox=store.outbox)
    for saga in built.values():
        bus.include_router(saga.router())
    sagaapp.FAULTS["undo"] = True
    async with bus:
        for n in (1, 2, 3):
            await bus.publish(Opened(ticket=f"t-{n}"), key=f"t-{n}")
        await bus.drain()
        await bus.publish(Closed(ticket="t-2", resolved=False), key="t-2")
        await bus.publish(Closed(ticket="t-3", resolved=True), key="t-3")
        await bus.drain()
        assert await SagaWorker(bus, [built["ticket"]]).run_once() == 1  # t-2's undo fails
    await store.engine.dispose()


async def _drop(env: dict[str, str]) -> None:
    _, store = _store(env)
    async with store.engine.begin() as connection:
        await connection.run_sync(store.metadata.drop_all)
    await store.engine.dispose()


async def _compensate(env: dict[str, str]) -> str:
    """What the application's worker makes of t-2 once the helpdesk API is back."""
    saga, store = _store(env)
    sagaapp.FAULTS["undo"] = False
    bus = EventBus("memory://", service="helpdesk", outbox=store.outbox)
    try:
        async with bus:
            await SagaWorker(bus, [saga]).run_once()
            instance = await saga.show("t-2")
    finally:
        await store.engine.dispose()
    assert instance.state.undone
    return instance.status


def _json(*args: str, cwd: Path, env: dict[str, str]) -> Any:
    result = eventbus("sagas", *args, "--json", cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.slow
def test_list_and_show_what_an_operator_needs(tmp_path: Path, database: dict[str, str]) -> None:
    listed = _json("list", APP, "--saga", "ticket", cwd=tmp_path, env=database)
    assert [(i["key"], i["status"], i["phase"]) for i in listed] == [
        ("t-1", "running", "waiting"),
        ("t-2", "compensation_failed", "waiting"),
        ("t-3", "completed", "waiting"),
    ]
    stuck = _json(
        "list", "tests.cli.sagaapp:ticket", "--status", "compensation_failed",
        cwd=tmp_path, env=database,
    )  # fmt: skip
    assert [i["key"] for i in stuck] == ["t-2"]
    audits = _json("list", APP, "--saga", "audit", cwd=tmp_path, env=database)
    assert [i["status"] for i in audits] == ["running"] * 3

    waiting = _json("show", APP, "t-1", "--saga", "ticket", cwd=tmp_path, env=database)
    assert waiting["state"] == {"ticket": "t-1", "undone": False}
    assert (waiting["status"], waiting["phase"], waiting["version"]) == ("running", "waiting", 1)
    assert [t["cause"] for t in waiting["history"]] == ["clitest.ticket.opened"]
    [timer] = waiting["timers"]
    assert (timer["kind"], timer["name"]) == ("timeout", "escalate")
    assert 3500 < timer["due_in"] <= 3600
    failed = _json("show", APP, "t-2", "--saga", "ticket", cwd=tmp_path, env=database)
    assert "the helpdesk API is down" in failed["last_error"]
    assert failed["compensations"] == ["undo"]
    assert [t["status"] for t in failed["history"]] == [
        "running", "compensating", "compensation_failed",
    ]  # fmt: skip

    table = eventbus("sagas", "list", APP, "--saga", "ticket", cwd=tmp_path, env=database)
    assert table.returncode == 0, table.stderr
    assert "compensation_failed" in table.stdout
    assert "3 instance(s) of saga 'ticket'" in table.stderr
    text = eventbus("sagas", "show", "tests.cli.sagaapp:ticket", "t-2", cwd=tmp_path, env=database)
    assert text.returncode == 0, text.stderr
    assert "last error: RuntimeError: the helpdesk API is down" in text.stdout
    assert "clitest.ticket.closed" in text.stdout
    assert "timers: none pending" in text.stdout


@pytest.mark.slow
def test_resume_a_stuck_instance_then_the_worker_compensates_it(
    tmp_path: Path, database: dict[str, str]
) -> None:
    command = ["sagas", "resume", "tests.cli.sagaapp:ticket"]
    running = eventbus(*command, "t-1", "--yes", cwd=tmp_path, env=database)
    assert running.returncode == 1
    assert running.stderr.splitlines() == [
        "error: saga 'ticket' instance 't-1' is running, not compensation_failed: only an "
        "instance whose compensations were given up can be resumed"
    ]
    refused = eventbus(*command, "t-2", cwd=tmp_path, env=database)
    assert refused.returncode == 1
    assert "pass --yes" in refused.stderr
    assert "the helpdesk API is down" in refused.stderr  # the question says why it stopped

    resumed = eventbus(*command, "t-2", "--yes", cwd=tmp_path, env=database)
    assert resumed.returncode == 0, resumed.stderr
    assert "is compensating again: the SagaWorker runs undo next" in resumed.stderr
    shown = _json("show", APP, "t-2", "--saga", "ticket", cwd=tmp_path, env=database)
    assert (shown["status"], shown["last_error"], shown["attempts"]) == ("compensating", None, 0)
    assert shown["history"][-1]["cause"] == "operator:resume"
    assert [t["kind"] for t in shown["timers"]] == ["compensate"]

    assert asyncio.run(_compensate(database)) == COMPENSATED
    again = eventbus(*command, "t-2", "--yes", cwd=tmp_path, env=database)
    assert again.returncode == 1
    assert "is compensated, not compensation_failed" in again.stderr


@pytest.mark.slow
def test_a_wrong_target_key_or_store_is_one_line_naming_the_fix(
    tmp_path: Path, database: dict[str, str]
) -> None:
    def error(*args: str) -> str:
        result = eventbus("sagas", *args, cwd=tmp_path, env=database)
        assert result.returncode == 1, result.stdout
        [line] = result.stderr.splitlines()  # one line, no traceback
        assert ":postgres@" not in line
        return line

    assert "pick one with --saga NAME (audit, ticket)" in error("list", APP)
    assert "no saga 'nope' in tests.cli.sagaapp:sagas; there are: audit, ticket" in error(
        "list", APP, "--saga", "nope"
    )
    assert error("show", "tests.cli.sagaapp:ticket", "t-9") == (
        "error: saga 'ticket' has no instance 't-9'; only its start event creates one; "
        "`eventbus sagas list tests.cli.sagaapp:ticket` lists its instances"
    )
    assert error("resume", APP, "--saga", "ticket", "t-9", "--yes").endswith(
        "`eventbus sagas list tests.cli.sagaapp:sagas --saga ticket` lists its instances"
    )
    assert error("list", "tests.cli.sagaapp:bare") == (
        "error: saga 'bare' has no store; set the application's where the saga is declared: "
        "Saga(..., store=SqlSagaStore(engine, outbox=outbox)) or saga.store = ..."
    )
    assert "MemorySagaStore, which holds nothing between processes" in error(
        "show", "tests.cli.sagaapp:in_memory", "t-1"
    )
    assert "is not a Saga" in error("list", "tests.cli.sagaapp:FAULTS")
    elsewhere = {**database, "CLIAPP_PREFIX": "nothere"}
    result = eventbus("sagas", "list", "tests.cli.sagaapp:ticket", cwd=tmp_path, env=elsewhere)
    assert result.returncode == 1
    assert "its tables exist (SqlSagaStore.create_tables()" in result.stderr
    assert len(result.stderr.splitlines()) == 1
