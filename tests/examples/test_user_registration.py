"""The user-registration example, end to end on the embedded default (memory bus, SQLite).

Run as a user runs it (``python -m examples.user_registration``) in a subprocess, then checked
by what the services stored, not only by what was printed.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.examples.processes import run_example


def test_every_service_reacts_once_and_the_dead_letter_is_replayed(tmp_path: Path) -> None:
    database = tmp_path / "registration.db"
    run = run_example("examples.user_registration", database_url=f"sqlite+aiosqlite:///{database}")
    assert run.returncode == 0, run.stdout + run.stderr

    with sqlite3.connect(database) as db:
        users = dict(db.execute("SELECT email, id FROM users"))
        mails = db.execute("SELECT email, user_id FROM welcome_mails ORDER BY email").fetchall()
        signups = db.execute("SELECT domain, count FROM signups_by_domain").fetchall()
        contacts = db.execute("SELECT user_id FROM crm_contacts").fetchall()
        inbox = db.execute("SELECT count(*) FROM eventbus_inbox").fetchone()
        outbox = db.execute("SELECT count(*) FROM eventbus_outbox").fetchone()
    assert set(users) == {"ada@example.com", "grace+news@example.com"}
    # one mail each, although Ada's event arrived twice and Grace's was dead-lettered first
    assert mails == [(email, users[email]) for email in sorted(users)]
    assert signups == [("example.com", 2)]  # the duplicate was not counted
    assert sorted(c for (c,) in contacts) == sorted(users.values())
    assert inbox == (2,)
    assert outbox == (0,)

    out = run.stdout
    assert "the mail API answered 503" in out  # the transient failure was retried
    assert "the first response, replayed" in out  # Idempotency-Key: one user for two POSTs
    assert out.index("refuses grace+news@example.com") < out.index("replaying")
    assert "welcome mail msg-2 sent to grace+news@example.com" in out
    assert "process auth.user.registered  group=email.welcome" in out  # the trace tree
