"""Fixtures for the webhook tests: a real HTTP receiver on loopback that answers as scripted,
an engine on SQLite or PostgreSQL (the outbox tests' fixture), a store with this test's own
tables, and a fake clock.

The receiver is the standard library's threading HTTP server: every request is recorded with
its raw body and headers, and answered by the next entry of the script of its path — a status
(``500``), a status with headers (``(429, {"retry-after": "120"})``), or ``HANG``: hold the
request unanswered until the test ends (a receiver that never answers).
"""

from __future__ import annotations

import dataclasses
import ssl
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from eventbus.clock import FakeClock
from eventbus.webhooks import AddressGuard, WebhookStore
from tests.outbox.conftest import engine  # SQLite, and PostgreSQL on the real server

__all__ = ["engine"]

HANG = "hang"
LOOPBACK = AddressGuard(allow=["127.0.0.0/8", "::1/128"])
"""The guard the tests deliver with: loopback explicitly allowed, nothing else."""


@dataclasses.dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


class Receiver:
    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.requests: list[Request] = []
        self.scripts: dict[str, list[Any]] = {}
        self.release = threading.Event()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with receiver.lock:
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    receiver.requests.append(Request(self.path, headers, body, time.time()))
                    script = receiver.scripts.get(self.path, [])
                    answer = script.pop(0) if len(script) > 1 else (script or [200])[0]
                if answer == HANG:
                    receiver.release.wait(60)
                    return
                status, extra = answer if isinstance(answer, tuple) else (answer, {})
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def script(self, path: str, *answers: Any) -> str:
        """Answer the requests to ``path`` with ``answers`` in turn (the last one repeats)."""
        self.scripts[path] = list(answers)
        return self.url(path)

    def to(self, path: str) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.path == path]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    made.thread.start()
    yield made
    made.release.set()
    made.server.shutdown()
    made.server.server_close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=time.time())


@pytest.fixture
async def store(engine: AsyncEngine, clock: FakeClock) -> AsyncIterator[WebhookStore]:
    made = WebhookStore(engine, prefix=f"wh_{uuid.uuid4().hex[:10]}", now=clock.now)
    await made.create_tables()
    yield made
    await made.drop_tables()
