"""Running an example's services as processes of their own, as its Procfile lists them."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).parent.parent.parent
DEADLINE = 60.0


class Services:
    """The Procfile's processes, each with its output in a file."""

    def __init__(self, procfile: Path, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs = env, logs
        self.commands = dict(
            line.split(": ", 1) for line in procfile.read_text().splitlines() if line.strip()
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
        banner = "worker ready" if "eventbus worker" in self.commands[name] else "startup complete"
        return self.output(name).count(banner) >= times


def rows(database: Path, query: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(database) as db:
        try:
            return db.execute(query).fetchall()
        except sqlite3.OperationalError:  # the tables are being created
            return []


def run_example(
    *args: str, database_url: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python -m ARGS`` as a user runs an example: on the embedded default (whatever the
    test's own environment says of a broker or database), or on ``database_url``."""
    env = environment()
    for name in ("EVENTBUS_URL", "EVENTBUS_OPTIONS", "DATABASE_URL"):
        env.pop(name, None)
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def environment(**values: str) -> dict[str, str]:
    """The test's environment with the venv's commands (eventbus, uvicorn) and the repository
    on the paths, and ``values``."""
    bin_dir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        **values,
    }


async def cli(services: Services, *args: str) -> str:
    """``eventbus ARGS`` as an operator runs it; its standard output."""
    run = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "eventbus.cli", *args, env=services.env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await run.communicate()
    assert run.returncode == 0, err.decode()
    return out.decode()


@contextmanager
def services_of(procfile: Path, setup: str, env: dict[str, str], logs: Path) -> Iterator[Services]:
    """The services of ``procfile``, after ``python -m setup`` has made their tables; any
    still running at the end are killed."""
    subprocess.run([sys.executable, "-m", setup], cwd=ROOT, env=env, check=True, timeout=DEADLINE)
    running = Services(procfile, env, logs)
    try:
        yield running
    finally:
        for process in running.running.values():
            process.kill()
