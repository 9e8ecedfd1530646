"""``eventbus worker run`` as a real process on Redis: it drains on SIGTERM and loses
nothing, a second signal stops it at once, and ``--workers 2`` restarts a killed worker."""

from __future__ import annotations

import os
import signal
import textwrap
import uuid
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from eventbus import Event, EventBus
from eventbus.outbox import Outbox
from eventbus.testing import wait_until
from tests.cli.support import Running, alive, eventbus, lines_of

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

APP = textwrap.dedent(
    """
    import asyncio, os, pathlib
    from eventbus import Event, EventBus

    LOG = pathlib.Path(os.environ["CLIAPP_LOG"])

    class Job(Event):
        event_type = os.environ["CLIAPP_TYPE"]
        n: int

    bus = EventBus(os.environ["CLIAPP_BROKER"], service="cliapp",
                   prefix=os.environ["CLIAPP_PREFIX"])

    @bus.subscribe(Job, group="cliapp.work", concurrency=4)
    async def work(job: Job) -> None:
        with LOG.open("a") as log:
            log.write(f"start {job.n} {os.getpid()}\\n")
        await asyncio.sleep(float(os.environ["CLIAPP_SECONDS"]))  # the work itself
        with LOG.open("a") as log:
            log.write(f"done {job.n} {os.getpid()}\\n")
    """
)
READY = r"\[(?:eventbus|worker-\d+) (\d+)\] eventbus\.cli: worker ready"


@pytest.fixture
def app(tmp_path: Path, redis_url: str, prefix: str) -> dict[str, str]:
    (tmp_path / "cliapp.py").write_text(APP)
    return {
        "CLIAPP_LOG": str(tmp_path / "handled.log"),
        "CLIAPP_TYPE": f"clitest.job.{uuid.uuid4().hex[:8]}",
        "CLIAPP_BROKER": redis_url,
        "CLIAPP_PREFIX": prefix,
        "CLIAPP_SECONDS": "0.5",
    }


async def _publish(env: dict[str, str], numbers: range) -> None:
    class Job(Event):
        event_type = env["CLIAPP_TYPE"]
        n: int

    async with EventBus(env["CLIAPP_BROKER"], prefix=env["CLIAPP_PREFIX"]) as bus:
        for n in numbers:
            await bus.publish(Job(n=n), key=str(n))


def _handled(env: dict[str, str], state: str) -> set[int]:
    words = [line.split() for line in lines_of(Path(env["CLIAPP_LOG"]))]
    return {int(w[1]) for w in words if w[0] == state}


async def test_sigterm_drains_the_running_handlers_exits_0_and_loses_nothing(
    tmp_path: Path, app: dict[str, str]
) -> None:
    worker = Running(
        "worker", "run", "cliapp:bus", "--shutdown-timeout", "20", cwd=tmp_path, env=app
    )
    try:
        worker.wait_for(READY)
        await _publish(app, range(12))
        await wait_until(lambda: len(_handled(app, "start")) >= 2, timeout=20)
        worker.signal(signal.SIGTERM)
        assert worker.finish() == 0, worker.stderr
    finally:
        worker.stop()
    started, done = _handled(app, "start"), _handled(app, "done")
    assert started, "a handler running at SIGTERM was cut off"
    assert started <= done, "a handler running at SIGTERM was cut off"
    assert "draining" in worker.stderr
    assert len(done) < 12, "the worker stopped only after all of the work: nothing drained"

    again = Running("worker", "run", "cliapp:bus", cwd=tmp_path, env=app)
    try:
        again.wait_for(READY)
        await wait_until(lambda: _handled(app, "done") == set(range(12)), timeout=30)
        again.signal(signal.SIGINT)
        assert again.finish() == 0, again.stderr
    finally:
        again.stop()


async def test_a_second_signal_stops_at_once(tmp_path: Path, app: dict[str, str]) -> None:
    app["CLIAPP_SECONDS"] = "120"
    worker = Running("worker", "run", "cliapp:bus", cwd=tmp_path, env=app)
    try:
        worker.wait_for(READY)
        await _publish(app, range(1))
        await wait_until(lambda: _handled(app, "start") == {0}, timeout=20)
        worker.signal(signal.SIGTERM)
        worker.wait_for("draining")
        worker.signal(signal.SIGTERM)
        assert worker.finish(timeout=10) == 1
    finally:
        worker.stop()
    assert "stopping at once" in worker.stderr
    assert _handled(app, "done") == set()


async def test_the_supervisor_restarts_a_killed_worker_and_passes_sigterm_on(
    tmp_path: Path, app: dict[str, str]
) -> None:
    supervisor = Running("worker", "run", "cliapp:bus", "--workers", "2", cwd=tmp_path, env=app)
    try:
        first = {int(m.group(1)) for m in supervisor.wait_for(READY, count=2)}
        assert len(first) == 2
        killed = min(first)
        os.kill(killed, signal.SIGKILL)
        supervisor.wait_for(r"died \(signal SIGKILL\)")
        third = int(supervisor.wait_for(READY, count=3)[2].group(1))
        assert third not in first
        await _publish(app, range(8))
        await wait_until(lambda: _handled(app, "done") == set(range(8)), timeout=30)
        supervisor.signal(signal.SIGTERM)
        assert supervisor.finish() == 0, supervisor.stderr
    finally:
        supervisor.stop()
    assert supervisor.stderr.count("worker stopped") == 2
    assert not any(alive(pid) for pid in (first | {third}) - {killed})


async def test_workers_drain_and_stop_when_their_supervisor_is_killed(
    tmp_path: Path, app: dict[str, str]
) -> None:
    supervisor = Running("worker", "run", "cliapp:bus", "--workers", "2", cwd=tmp_path, env=app)
    try:
        workers = {int(m.group(1)) for m in supervisor.wait_for(READY, count=2)}
        supervisor.process.kill()
        supervisor.finish()
        await wait_until(lambda: not any(alive(pid) for pid in workers), timeout=20)
    finally:
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        supervisor.stop()
    assert supervisor.stderr.count("is gone: draining and stopping") == 2


def test_a_bad_module_path_is_one_line_naming_the_fix(tmp_path: Path) -> None:
    result = eventbus("worker", "run", "no_such_app.main:bus", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: cannot import 'no_such_app.main': no module named 'no_such_app'; run the "
        "command from the directory that holds it, or add that directory to PYTHONPATH"
    ]
    (tmp_path / "app_without_bus.py").write_text(
        "from eventbus import EventBus\nmine = EventBus()\n"
    )
    result = eventbus("worker", "run", "app_without_bus:bus", cwd=tmp_path)
    assert result.returncode == 1
    assert "has no attribute 'bus'; it has EventBus objects: mine" in result.stderr
    assert eventbus("worker", "run", "app_without_bus", cwd=tmp_path).returncode == 2


RELAY_APP = textwrap.dedent(
    """
    import os, pathlib
    from eventbus import Event, EventBus
    from eventbus.outbox import Outbox

    LOG = pathlib.Path(os.environ["CLIAPP_LOG"])

    class Job(Event):
        event_type = os.environ["CLIAPP_TYPE"]
        n: int

    outbox = Outbox()
    bus = EventBus(os.environ["CLIAPP_BROKER"], service="cliapp", outbox=outbox,
                   prefix=os.environ["CLIAPP_PREFIX"])

    @bus.subscribe(Job, group="cliapp.work")
    async def work(job: Job) -> None:
        with LOG.open("a") as log:
            log.write(f"done {job.n} {os.getpid()}\\n")
    """
)


async def test_relay_publishes_what_the_app_staged_to_its_own_consumers(
    tmp_path: Path, app: dict[str, str]
) -> None:
    (tmp_path / "relayapp.py").write_text(RELAY_APP)
    db = f"sqlite+aiosqlite:///{tmp_path}/app.db"
    engine = create_async_engine(db)
    outbox = Outbox()
    await outbox.create_tables(engine)

    class Job(Event):
        event_type = app["CLIAPP_TYPE"]
        n: int

    worker = Running("worker", "run", "relayapp:bus", "--relay", "--db", db, cwd=tmp_path, env=app)
    try:
        worker.wait_for(READY)
        assert "outbox relay on sqlite+aiosqlite:///" in worker.stderr
        staging = EventBus("memory://", outbox=outbox)  # this process only stages
        async with AsyncSession(engine) as session, session.begin():
            for n in range(3):
                await staging.publish(Job(n=n), session=session)
        await wait_until(lambda: _handled(app, "done") == {0, 1, 2}, timeout=30)
        worker.signal(signal.SIGTERM)
        assert worker.finish() == 0, worker.stderr
    finally:
        worker.stop()
        await engine.dispose()


def test_relay_without_a_database_is_a_usage_error(tmp_path: Path) -> None:
    result = eventbus("worker", "run", "anything:bus", "--relay", cwd=tmp_path)
    assert result.returncode == 2
    assert "give --db URL" in result.stderr
