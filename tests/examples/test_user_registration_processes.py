"""The user-registration example with each service as its own process, on Redis.

The processes are the ``Procfile``'s own lines (the auth service under uvicorn, the three
consumers under ``eventbus worker run``), so the file a user runs is the one tested; the
operator's part goes through the ``eventbus dlq`` command. Checked by what each service
stored in the database.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from eventbus.testing import wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.redis, pytest.mark.slow]
ROOT = Path(__file__).parent.parent.parent
PROCFILE = ROOT / "examples" / "user_registration" / "Procfile"
DEADLINE = 60.0


class Services:
    """The Procfile's processes, each with its output in a file."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs = env, logs
        self.commands = dict(
            line.split(": ", 1) for line in PROCFILE.read_text().splitlines() if line.strip()
        )
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, **extra: str) -> None:
        log = (self.logs / f"{name}.log").open("ab")
        self.running[name] = subprocess.Popen(
            ["bash", "-c", f"exec {self.commands[name]}"],
            cwd=ROOT, env={**self.env, **extra}, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    async def stop(self, name: str) -> int:
        process = self.running.pop(name)
        process.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(process.wait, DEADLINE)

    def output(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text()

    async def stop_all(self) -> dict[str, int]:
        return {name: await self.stop(name) for name in list(self.running)}

    def ready(self, name: str, times: int = 1) -> bool:
        banner = "Application startup complete" if name == "auth" else "worker ready"
        return self.output(name).count(banner) >= times


def rows(database: Path, query: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(database) as db:
        try:
            return db.execute(query).fetchall()
        except sqlite3.OperationalError:  # the tables are being created
            return []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def services(tmp_path: Path, redis_url: str, prefix: str) -> Iterator[Services]:
    bin_dir = str(Path(sys.executable).parent)  # eventbus, uvicorn
    env = {
        **os.environ,
        "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "EVENTBUS_URL": redis_url,
        "EVENTBUS_OPTIONS": json.dumps({"prefix": prefix}),  # keys of this test's own
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'registration.db'}",
        "AUTH_PORT": str(free_port()),
    }
    tables = [sys.executable, "-m", "examples.user_registration.tables"]
    subprocess.run(tables, cwd=ROOT, env=env, check=True, timeout=DEADLINE)
    running = Services(env, tmp_path)
    try:
        yield running
    finally:
        for process in running.running.values():
            process.kill()


async def cli(services: Services, *args: str) -> str:
    """``eventbus ARGS`` as an operator runs it; its standard output."""
    run = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "eventbus.cli", *args, env=services.env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await run.communicate()
    assert run.returncode == 0, err.decode()
    return out.decode()


async def test_each_service_as_a_process_and_the_operator_replays_with_the_cli(
    services: Services, tmp_path: Path, prefix: str
) -> None:
    database = tmp_path / "registration.db"
    for name in services.commands:
        services.start(name)
    await wait_until(lambda: all(map(services.ready, services.commands)), timeout=DEADLINE)
    auth = f"http://127.0.0.1:{services.env['AUTH_PORT']}"
    async with httpx.AsyncClient(base_url=auth, timeout=10) as client:
        for email, name in [("ada@example.com", "Ada"), ("grace+news@example.com", "Grace")]:
            response = await client.post("/users", json={"email": email, "name": name})
            assert response.status_code == 201, response.text

    def stored(query: str) -> int:
        return len(rows(database, query))

    await wait_until(lambda: rows(database, "SELECT count FROM signups_by_domain") == [(2,)])
    await wait_until(lambda: stored("SELECT * FROM crm_contacts") == 2)
    await wait_until(lambda: stored("SELECT * FROM welcome_mails") == 1)  # Ada's
    broker = ["--broker", services.env["EVENTBUS_URL"], "--group", "email.welcome"]
    broker += ["--broker-option", f"prefix={json.dumps(prefix)}"]

    async def dead_letters() -> list[dict[str, object]]:
        return list(json.loads(await cli(services, "dlq", "list", *broker, "--json")))

    async def one_dead_letter() -> bool:
        return len(await dead_letters()) == 1

    await wait_until(one_dead_letter, timeout=DEADLINE)  # Grace's
    [dead] = await dead_letters()
    assert "plus-addresses are not accepted" in str(dead["error_message"])

    # the operator deploys the fix (a restarted e-mail service), then replays
    assert await services.stop("email") == 0
    services.start("email", EMAIL_ACCEPTS_PLUS_ADDRESSES="1")
    await wait_until(lambda: services.ready("email", times=2), timeout=DEADLINE)
    await cli(services, "dlq", "replay", *broker, "--all")
    await wait_until(lambda: stored("SELECT * FROM welcome_mails") == 2, timeout=DEADLINE)
    assert await dead_letters() == []

    exits = await services.stop_all()
    assert exits.pop("auth") in (0, -signal.SIGTERM)  # uvicorn ends by re-raising the signal
    assert "Application shutdown complete" in services.output("auth")
    assert exits == {"analytics": 0, "crm": 0, "email": 0}  # each drained, then exited
    mails = rows(database, "SELECT email FROM welcome_mails ORDER BY email")
    assert mails == [("ada@example.com",), ("grace+news@example.com",)]  # once each
    assert rows(database, "SELECT count FROM signups_by_domain") == [(2,)]
