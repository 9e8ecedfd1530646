"""Fixtures for the web tests: the outbox tests' engine (SQLite, and PostgreSQL on the real
server) and outbox tables of this test's own."""

from __future__ import annotations

from tests.outbox.conftest import engine, outbox

__all__ = ["engine", "outbox"]
