"""User registration: one auth service, three consumers of its ``UserRegistered`` event.

``python -m examples.user_registration`` runs every service in one process on the embedded
default (the in-memory bus and SQLite) and prints what happens; see ``README.md`` for running
each service as its own process on a real broker.
"""
