"""The user-registration example with each service as its own process, on Redis.

The processes are the ``Procfile``'s own lines (the auth service under uvicorn, the three
consumers under ``eventbus worker run``), so the file a user runs is the one tested; the
operator's part goes through the ``eventbus dlq`` command. Checked by what each service
stored in the database.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from eventbus.testing import wait_until
from tests.examples.processes import (
    DEADLINE,
    ROOT,
    Services,
    cli,
    environment,
    free_port,
    rows,
    services_of,
)

pytestmark = [pytest.mark.anyio, pytest.mark.redis, pytest.mark.slow]
PROCFILE = ROOT / "examples" / "user_registration" / "Procfile"


@pytest.fixture
def services(tmp_path: Path, redis_url: str, prefix: str) -> Iterator[Services]:
    env = environment(
        EVENTBUS_URL=redis_url,
        EVENTBUS_OPTIONS=json.dumps({"prefix": prefix}),  # keys of this test's own
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'registration.db'}",
        AUTH_PORT=str(free_port()),
    )
    with services_of(PROCFILE, "examples.user_registration.tables", env, tmp_path) as running:
        yield running


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
            key = {"Idempotency-Key": f'"{email}-1"'}  # the RFC 8941 form: a quoted string
            response = await client.post("/users", json={"email": email, "name": name}, headers=key)
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
