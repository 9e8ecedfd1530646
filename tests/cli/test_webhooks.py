"""``eventbus webhooks list|attempts|replay|enable|disable`` against a WebhookStore on SQLite
and PostgreSQL whose deliveries went to a real HTTP receiver: what an operator sees (never a
secret), a dead delivery replayed from the command line and delivered by the sender, an
endpoint disabled and enabled."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from eventbus.webhooks import RetrySchedule, WebhookSender, WebhookStore
from tests.cli.support import eventbus
from tests.webhooks.conftest import LOOPBACK, Receiver, receiver
from tests.webhooks.support import event

__all__ = ["receiver"]

SCHEDULE = RetrySchedule(delays=(0, 300, 3600), jitter=0)


@dataclass
class Staged:
    db: list[str]
    """``--db URL --prefix P``."""
    url: str
    prefix: str
    endpoints: dict[str, str]
    """Its endpoints' ids: ``ok`` (acme, 204), ``refused`` (globex, 400 once, then 204) and
    ``flaky`` (globex, 500)."""
    secrets: list[str]
    deliveries: dict[str, str]


@pytest.fixture(params=["sqlite", "postgresql"])
def staged(request: pytest.FixtureRequest, tmp_path: Path, receiver: Receiver) -> Iterator[Staged]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"
    else:
        request.applymarker(pytest.mark.postgres)
        url = request.getfixturevalue("postgres_url")
    staged = asyncio.run(_stage(url, f"wh_{uuid.uuid4().hex[:10]}", receiver))
    yield staged
    asyncio.run(_with_store(staged, lambda store: store.drop_tables()))


async def _with_store(staged: Staged, work: Any) -> Any:
    engine = create_async_engine(staged.url)
    try:
        return await work(WebhookStore(engine, prefix=staged.prefix))
    finally:
        await engine.dispose()


async def _stage(url: str, prefix: str, receiver: Receiver) -> Staged:
    engine = create_async_engine(url)
    store = WebhookStore(engine, prefix=prefix)
    await store.create_tables()
    add = store.endpoints.add
    ok = await add("acme", receiver.script("/ok?token=t0ps3cret", 204), ["clitest.invoice.*"])
    refused = await add("globex", receiver.script("/refused", 400, 204), ["#"])
    flaky = await add("globex", receiver.script("/flaky", 500), ["#"])
    await store.endpoints.rotate_secret(ok.id)  # two secrets sign during the overlap
    assert await store.take(event("clitest.invoice.paid", invoice="INV-1")) == 3
    sender = WebhookSender(store, guard=LOOPBACK, schedule=SCHEDULE)
    assert await sender.run_once() == 3
    await sender.stop()
    endpoints = await store.endpoints.list()
    deliveries = {d.endpoint_id: d.id for d in await store.deliveries.list()}
    await engine.dispose()
    return Staged(
        db=["--db", url, "--prefix", prefix],
        url=url,
        prefix=prefix,
        endpoints={"ok": ok.id, "refused": refused.id, "flaky": flaky.id},
        secrets=[s for e in endpoints for s in e.secrets],
        deliveries={name: deliveries[id_] for name, id_ in
                    (("ok", ok.id), ("refused", refused.id), ("flaky", flaky.id))},
    )  # fmt: skip


def _run(staged: Staged, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = eventbus("webhooks", *args, *staged.db, cwd=cwd)
    for secret in staged.secrets:
        assert secret not in result.stdout + result.stderr
    return result


def _json(staged: Staged, cwd: Path, *args: str) -> Any:
    result = _run(staged, cwd, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.slow
def test_list_and_the_delivery_log_show_no_secret(tmp_path: Path, staged: Staged) -> None:
    ids = staged.endpoints
    listed = _json(staged, tmp_path, "list")
    assert [(e["id"], e["tenant"], e["enabled"]) for e in listed] == [
        (ids["ok"], "acme", True), (ids["refused"], "globex", True), (ids["flaky"], "globex", True),
    ]  # fmt: skip
    ok = listed[0]
    assert ok["url"].endswith("/ok?token=***")
    assert ok["event_types"] == ["clitest.invoice.*"]
    assert ok["signing_secrets"] == 2
    assert [e["lag_seconds"] > 0 for e in listed] == [False, False, True]  # flaky waits
    assert [e["id"] for e in _json(staged, tmp_path, "list", "--tenant", "globex")] == [
        ids["refused"], ids["flaky"],
    ]  # fmt: skip
    table = _run(staged, tmp_path, "list")
    assert table.returncode == 0, table.stderr
    assert "t0ps3cret" not in table.stdout
    assert "3 endpoint(s)" in table.stderr

    [flaky] = _json(staged, tmp_path, "attempts", ids["flaky"])
    assert (flaky["attempt"], flaky["status_code"], flaky["outcome"]) == (1, 500, "pending")
    assert flaky["next_attempt_at"] is not None
    assert flaky["latency"] > 0
    [dead] = _json(staged, tmp_path, "attempts", "--delivery", staged.deliveries["refused"])
    assert (dead["endpoint_id"], dead["status_code"], dead["outcome"]) == (
        ids["refused"], 400, "dead",
    )  # fmt: skip
    assert dead["next_attempt_at"] is None
    every = _json(staged, tmp_path, "attempts", "--limit", "2")
    assert len(every) == 2
    log = _run(staged, tmp_path, "attempts")
    assert log.returncode == 0, log.stderr
    assert all(i in log.stdout for i in staged.deliveries.values())
    assert "3 attempt(s)" in log.stderr


@pytest.mark.slow
def test_replay_a_dead_delivery_and_disable_then_enable_an_endpoint(
    tmp_path: Path, staged: Staged, receiver: Receiver
) -> None:
    dead = staged.deliveries["refused"]
    replayed = _run(staged, tmp_path, "replay", dead)
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stderr == f"delivery {dead!r} is due again\n"

    async def send(store: WebhookStore) -> tuple[str, int]:
        sender = WebhookSender(store, guard=LOOPBACK, schedule=SCHEDULE)
        await sender.run_once()
        await sender.stop()
        delivery = await store.deliveries.get(dead)
        return delivery.state, delivery.attempts

    assert asyncio.run(_with_store(staged, send)) == ("delivered", 1)
    assert [r.headers["webhook-id"] for r in receiver.to("/refused")] == [
        receiver.to("/refused")[0].headers["webhook-id"]
    ] * 2  # the same webhook-id: a receiver that handled it recognises the duplicate

    ok = staged.endpoints["ok"]
    disabled = _run(staged, tmp_path, "disable", ok, "--reason", "customer asked")
    assert disabled.returncode == 0, disabled.stderr
    [shown] = _json(staged, tmp_path, "list", "--tenant", "acme")
    assert (shown["enabled"], shown["disabled_reason"]) == (False, "customer asked")
    waiting = _run(staged, tmp_path, "replay", staged.deliveries["ok"])
    assert waiting.returncode == 0, waiting.stderr
    assert f"its endpoint {ok!r} is disabled, so it waits" in waiting.stderr
    table = _run(staged, tmp_path, "list", "--tenant", "acme")
    assert "no: customer asked" in table.stdout
    enabled = _run(staged, tmp_path, "enable", ok)
    assert enabled.returncode == 0, enabled.stderr
    [shown] = _json(staged, tmp_path, "list", "--tenant", "acme")
    assert (shown["enabled"], shown["disabled_reason"]) == (True, None)


@pytest.mark.slow
def test_an_unknown_id_or_table_is_one_line(tmp_path: Path, staged: Staged) -> None:
    def error(*args: str) -> str:
        result = _run(staged, tmp_path, *args)
        assert result.returncode == 1, result.stdout
        [line] = result.stderr.splitlines()
        assert ":postgres@" not in line
        return line

    assert error("attempts", "ep_nope") == (
        "error: no webhook endpoint 'ep_nope'; `eventbus webhooks list` shows the endpoints' ids"
    )
    assert error("attempts", "--delivery", "dl_nope").startswith(
        "error: no webhook delivery 'dl_nope'; `eventbus webhooks attempts` shows"
    )
    assert error("replay", "dl_nope").startswith("error: no webhook delivery 'dl_nope'")
    assert error("disable", "ep_nope").startswith("error: no webhook endpoint 'ep_nope'")
    assert error("enable", "ep_nope").startswith("error: no webhook endpoint 'ep_nope'")
    flaky, delivery = staged.endpoints["flaky"], staged.deliveries["flaky"]
    asyncio.run(_with_store(staged, lambda store: store.endpoints.remove(flaky)))
    assert error("replay", delivery) == (
        f"error: the endpoint {flaky!r} of delivery {delivery!r} was removed: nothing would send it"
    )
    [kept] = _json(staged, tmp_path, "attempts", flaky)  # the log of a removed endpoint stays
    assert (kept["delivery_id"], kept["status_code"]) == (delivery, 500)

    elsewhere = ["--db", staged.url, "--prefix", "wh_nothere"]
    missing = eventbus("webhooks", "list", *elsewhere, cwd=tmp_path)
    assert missing.returncode == 1
    [line] = missing.stderr.splitlines()
    assert line.startswith("error: the database refused: ")
    assert line.endswith(
        "check that --db is the application's database and --prefix its webhook tables' "
        "prefix (created by WebhookStore.create_tables() or the application's migrations)"
    )


def test_a_database_url_password_is_never_printed(tmp_path: Path) -> None:
    url = "postgresql+asyncpg://app:s3cret@127.0.0.1:1/app"
    result = eventbus("webhooks", "list", "--db", url, cwd=tmp_path)
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ")
    assert "s3cret" not in line
    assert "check that the server is running" in line
