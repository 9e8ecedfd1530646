"""Both example apps on PostgreSQL (``DATABASE_URL``), twice each: a rerun starts clean."""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from tests.examples.processes import run_example

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
DATABASE = "eventbus_examples"


@pytest.fixture
def database_url(postgres_url: str) -> str:
    """A database of the examples' own on the test server, so their tables meet no other's."""
    url = make_url(postgres_url)

    async def create() -> None:
        engine = create_async_engine(url, isolation_level="AUTOCOMMIT")  # CREATE DATABASE
        try:
            async with engine.connect() as connection:
                query = sa.text("SELECT 1 FROM pg_database WHERE datname = :name")
                if not await connection.scalar(query, {"name": DATABASE}):
                    await connection.execute(sa.text(f'CREATE DATABASE "{DATABASE}"'))
        finally:
            await engine.dispose()

    asyncio.run(create())
    return url.set(database=DATABASE).render_as_string(hide_password=False)


@pytest.mark.parametrize(
    "command", [["examples.user_registration"], ["examples.order_flow", "--fail", "payment"]]
)
def test_an_example_runs_twice_on_postgresql(command: list[str], database_url: str) -> None:
    for _ in range(2):
        run = run_example(*command, database_url=database_url, timeout=180)
        assert run.returncode == 0, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
