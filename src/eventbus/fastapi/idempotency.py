"""``IdempotencyKeyMiddleware``: the HTTP ``Idempotency-Key`` header, as an ASGI middleware.

Following the IETF draft *The Idempotency-Key HTTP Header Field*: a client sends a unique key
with a ``POST`` or ``PATCH`` (an RFC 8941 string, ``Idempotency-Key: "8e03978e"``, or the bare
``Idempotency-Key: 8e03978e`` many clients send) and may retry the request as often as it
likes; the endpoint runs once.

* First request with a key: claimed in the store (with a lease), run, and its response
  (status, headers, body) stored with the key for ``expiry`` seconds.
* A retry after that: the stored response again, with ``Idempotent-Replayed: true``; the
  endpoint does not run.
* The same key with another request (method, path, query or body differ): ``422``.
* The same key while the first request is still running: ``409``, with ``Retry-After``.
* No key where one is required: ``400``; two keys, or a malformed one: ``400``.

Errors are ``application/problem+json``. A response with a 5xx status is not stored (unless
``store_server_errors=True``): the key is released, so a retry runs the endpoint again. An
endpoint that raises releases the key too (with ``sessionmaker=``, that includes an
``HTTPException``: its writes rolled back, so there is nothing to replay). A process that
dies mid-request holds the key until the lease runs out. The stores are the idempotency
middleware's (memory, Redis, SQL).

With ``sessionmaker=`` (and the SQL store) the middleware opens the request's database
transaction itself: :class:`eventbus.fastapi.Transaction` hands the endpoint that session,
and the stored response, the endpoint's writes and the events it staged in the outbox commit
in one transaction — or none of them do.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import math
import re
import uuid
from collections.abc import Awaitable, Callable, Collection, MutableMapping, Sequence
from typing import Any

import anyio

from eventbus.errors import ConfigurationError
from eventbus.middleware.idempotency import (
    ClaimStatus,
    IdempotencyStore,
    TransactionalIdempotencyStore,
)

__all__ = [
    "REPLAYED_HEADER",
    "SESSION_STATE_KEY",
    "IdempotencyKeyMiddleware",
    "RequestTransaction",
    "parse_key",
]

log = logging.getLogger("eventbus.idempotency")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

REPLAYED_HEADER = "Idempotent-Replayed"
SESSION_STATE_KEY = "eventbus.idempotency.session"
"""The key of the request's :class:`RequestTransaction` in the ASGI scope's ``state``."""


@dataclasses.dataclass
class RequestTransaction:
    """The session the middleware opened for a request; ``failed`` is set by
    ``eventbus.fastapi.Transaction`` when the endpoint raised, which rolls it all back."""

    session: Any
    failed: bool = False


_SF_STRING = re.compile(r'^"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"$')
_BARE = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+$")


def parse_key(value: str, max_length: int = 255) -> str | None:
    """The key of an ``Idempotency-Key`` header value: an RFC 8941 string or a bare token of
    visible ASCII; ``None`` if it is neither, empty, or longer than ``max_length``."""
    value = value.strip(" \t")
    quoted = _SF_STRING.match(value)
    if quoted:
        key = re.sub(r"\\(.)", r"\1", quoted.group(1))
    elif _BARE.match(value):
        key = value
    else:
        return None
    return key if 0 < len(key) <= max_length else None


class IdempotencyKeyMiddleware:
    """Run each (client, key) request once and replay its response; see the module docs.

    ``store`` is an ``IdempotencyStore`` (``MemoryIdempotencyStore``, ``RedisIdempotencyStore``,
    ``SqlIdempotencyStore``). ``methods`` are the methods covered, ``paths`` the path prefixes
    (all when ``None``). ``required`` answers 400 to a covered request without a key (else it
    runs as usual). ``expiry`` is how long a response is kept and replayed (24 hours by
    default): a retry later than that runs again. ``lease`` must exceed the slowest request.
    ``identity(scope)`` names the client (an API key, a user id from the headers): keys of
    different clients never meet. ``sessionmaker`` makes the middleware own the request's
    transaction (needs a store with ``complete_in``, the SQL one, on the same database).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        store: IdempotencyStore,
        methods: Collection[str] = ("POST", "PATCH"),
        paths: Sequence[str] | None = None,
        required: bool = True,
        expiry: float = 24 * 3600.0,
        lease: float = 60.0,
        identity: Callable[[Scope], str | None] | None = None,
        sessionmaker: Callable[[], Any] | None = None,
        store_server_errors: bool = False,
        max_key_length: int = 255,
    ) -> None:
        if not expiry > 0 or not lease > 0:
            raise ConfigurationError("IdempotencyKeyMiddleware expiry and lease must be > 0 s")
        if sessionmaker is not None and not isinstance(store, TransactionalIdempotencyStore):
            raise ConfigurationError(
                f"IdempotencyKeyMiddleware(sessionmaker=...) stores the response in the "
                f"request's transaction, which {type(store).__name__} cannot: use "
                "SqlIdempotencyStore on the same database, or leave sessionmaker out"
            )
        self.app, self.store = app, store
        self.methods = frozenset(m.upper() for m in methods)
        self.paths = tuple(paths) if paths is not None else None
        self.required, self.expiry, self.lease = required, float(expiry), float(lease)
        self.identity, self.sessionmaker = identity, sessionmaker
        self._transactional = store if isinstance(store, TransactionalIdempotencyStore) else None
        self.store_server_errors, self.max_key_length = store_server_errors, max_key_length

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._covers(scope):
            await self.app(scope, receive, send)
            return
        values = [v for k, v in scope.get("headers", ()) if k.lower() == b"idempotency-key"]
        single = values[0].decode("latin-1") if len(values) == 1 else None
        key = parse_key(single, self.max_key_length) if single is not None else None
        if key is not None:
            await self._keyed(scope, receive, send, key)
        elif values:  # two keys, or one that is neither an sf-string nor a token
            await _problem(send, 400, "Idempotency-Key malformed", _MALFORMED)
        elif self.required:
            await _problem(send, 400, "Idempotency-Key missing", _MISSING)
        else:
            await self.app(scope, receive, send)

    async def _keyed(self, scope: Scope, receive: Receive, send: Send, key: str) -> None:
        body = await _read_body(receive)
        identity = self.identity(scope) if self.identity is not None else None
        if identity is not None and len(identity) > 64:  # kept short for every store
            identity = hashlib.sha256(identity.encode()).hexdigest()
        group = "http" if identity is None else f"http:{identity}"
        fingerprint = _fingerprint(scope, body)
        owner = uuid.uuid4().hex
        claim = await self.store.claim(group, key, owner=owner, lease=self.lease)
        if claim.status is ClaimStatus.BUSY:
            retry = {"retry-after": str(max(1, math.ceil(claim.retry_after)))}
            await _problem(send, 409, "Idempotency-Key in use", _BUSY, retry)
        elif claim.status is ClaimStatus.DONE:
            await self._replay(send, claim.result, fingerprint)
        else:
            receive = _replaying(body, receive)
            await self._first(scope, receive, send, (group, key, owner), fingerprint)

    def _covers(self, scope: Scope) -> bool:
        if scope["type"] != "http" or scope.get("method", "").upper() not in self.methods:
            return False
        return self.paths is None or str(scope.get("path", "")).startswith(self.paths)

    async def _replay(self, send: Send, stored: bytes | None, fingerprint: str) -> None:
        response = _decode(stored)
        if response is None:  # done without a response: not one of ours
            await _problem(send, 422, "Idempotency-Key already used", _REUSED)
        elif response["fingerprint"] != fingerprint:
            await _problem(send, 422, "Idempotency-Key used with another request", _REUSED)
        else:
            headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response["headers"]]
            headers.append((REPLAYED_HEADER.lower().encode(), b"true"))
            await send(
                {"type": "http.response.start", "status": response["status"], "headers": headers}
            )
            await send({"type": "http.response.body", "body": base64.b64decode(response["body"])})

    async def _first(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        claim: tuple[str, str, str],
        fingerprint: str,
    ) -> None:
        group, key, owner = claim
        captured = _Captured()
        try:
            if self.sessionmaker is None:
                await self.app(scope, receive, captured.send)
                if not self._keeps(captured.status):
                    await self._release(group, key, owner)
                else:
                    result = captured.encode(fingerprint)
                    await self.store.complete(
                        group, key, owner=owner, retention=self.expiry, result=result
                    )
            else:
                await self._in_transaction(scope, receive, captured, claim, fingerprint)
        except BaseException:
            await self._release(group, key, owner)
            raise
        await captured.replay(send)

    async def _in_transaction(
        self,
        scope: Scope,
        receive: Receive,
        captured: _Captured,
        claim: tuple[str, str, str],
        fingerprint: str,
    ) -> None:
        group, key, owner = claim
        store, sessionmaker = self._transactional, self.sessionmaker
        if store is None or sessionmaker is None:  # pragma: no cover - checked in __init__
            raise ConfigurationError("IdempotencyKeyMiddleware: no transactional store")
        async with sessionmaker() as session:
            transaction = await session.begin()
            try:
                request = RequestTransaction(session)
                state = {**scope.get("state", {}), SESSION_STATE_KEY: request}
                await self.app({**scope, "state": state}, receive, captured.send)
                if request.failed or not self._keeps(captured.status):
                    await transaction.rollback()
                    await self._release(group, key, owner)
                    return
                result = captured.encode(fingerprint)
                await store.complete_in(
                    session, group, key, owner=owner, retention=self.expiry, result=result
                )
                await transaction.commit()
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await transaction.rollback()
                raise

    def _keeps(self, status: int | None) -> bool:
        return status is not None and (status < 500 or self.store_server_errors)

    async def _release(self, group: str, key: str, owner: str) -> None:
        with anyio.CancelScope(shield=True):  # a cancelled request must still free its key
            try:
                await self.store.release(group, key, owner=owner)
            except Exception:
                log.exception(
                    "could not release Idempotency-Key %r; a retry gets 409 until its lease "
                    "(%gs) runs out",
                    key,
                    self.lease,
                )


class _Captured:
    """The response the application sent, held back until it is stored."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
            self.headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", ())]
        elif message["type"] == "http.response.body":
            self.body += message.get("body", b"")

    def encode(self, fingerprint: str) -> bytes:
        return json.dumps(
            {
                "fingerprint": fingerprint,
                "status": self.status,
                "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in self.headers],
                "body": base64.b64encode(bytes(self.body)).decode(),
            }
        ).encode()

    async def replay(self, send: Send) -> None:
        if self.status is None:
            return  # the application sent nothing (it raised before): nothing to pass on
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": bytes(self.body)})


def _decode(stored: bytes | None) -> dict[str, Any] | None:
    try:
        response = json.loads(stored) if stored else None
    except ValueError:
        return None
    return response if isinstance(response, dict) and "fingerprint" in response else None


def _fingerprint(scope: Scope, body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (scope.get("method", ""), scope.get("path", ""), scope.get("query_string", b"")):
        digest.update(part if isinstance(part, bytes) else str(part).encode())
        digest.update(b"\0")
    digest.update(body)
    return digest.hexdigest()


async def _read_body(receive: Receive) -> bytes:
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    return bytes(body)


def _replaying(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the body read already, then waits on the real one."""
    sent = False

    async def again() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again


_MISSING = "This request needs an Idempotency-Key header: a unique value, such as a UUID."
_MALFORMED = (
    'The Idempotency-Key header must appear once, as a string ("..." per RFC 8941) or a bare '
    "token of visible ASCII characters, of 1 to 255 characters."
)
_BUSY = "The first request with this Idempotency-Key has not finished; retry after a while."
_REUSED = "This Idempotency-Key was used for a different request; use a new key."


async def _problem(
    send: Send, status: int, title: str, detail: str, extra: dict[str, str] | None = None
) -> None:
    body = json.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail})
    headers = [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode()),
    ]
    headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body.encode()})
