"""The auth service: ``POST /users`` saves the user and publishes ``UserRegistered``.

The user row and the event are written in **one transaction**: the event is staged in the
outbox table, and the outbox relay publishes it once the transaction has committed. A crash
between the two, or a broker that is down, can neither lose the event nor publish one for a
user that was never saved.

``POST /users`` takes an ``Idempotency-Key`` header: a retried request gets the first
response back (``Idempotent-Replayed: true``) and registers nobody twice.

Run it on its own with ``uvicorn examples.user_registration.auth_service:app``: the app's
lifespan starts the bus and the outbox relay.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from eventbus.fastapi import IdempotencyKeyMiddleware, OutboxPublisher, Transaction, lifespan
from eventbus.outbox import OutboxRelay
from examples.timeline import say
from examples.user_registration.events import UserRegistered
from examples.user_registration.settings import engine, request_keys, service_bus
from examples.user_registration.tables import users

bus = service_bus("auth", with_outbox=True)
transaction = Transaction(async_sessionmaker(engine, expire_on_commit=False))

app = FastAPI(title="auth", lifespan=lifespan(bus, services=[OutboxRelay(engine, bus)]))
# A client that retries POST /users after a timeout sends the same Idempotency-Key: it gets
# the first response back instead of a second registration. The stored response, the user
# row and the staged event commit in the request's one transaction.
app.add_middleware(
    IdempotencyKeyMiddleware,
    store=request_keys,
    sessionmaker=transaction.sessionmaker,
    paths=["/users"],
)

Session = Annotated[AsyncSession, transaction.depends]
Publisher = Annotated[OutboxPublisher, Depends(transaction.publisher)]


class Registration(BaseModel):
    email: str
    name: str


class User(BaseModel):
    id: str
    email: str
    name: str


@app.post("/users", status_code=201)
async def register(registration: Registration, db: Session, publisher: Publisher) -> User:
    user = User(id=str(uuid.uuid4()), **registration.model_dump())
    try:
        await db.execute(users.insert().values(**user.model_dump()))
        await db.flush()
    except IntegrityError:
        raise HTTPException(409, f"{user.email} is registered already") from None
    event = UserRegistered(user_id=user.id, email=user.email, name=user.name)
    envelope = await publisher.publish(event, key=user.id)  # staged in this transaction
    say("auth", f"registered {user.email}; UserRegistered staged in the outbox", envelope)
    return user
