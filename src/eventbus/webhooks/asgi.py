"""``webhook_app``: a plain ASGI application that receives webhooks through a receiver.

Mount it where the sender POSTs (``app.mount("/webhooks", webhook_app(receiver, handle))`` in
Starlette or FastAPI, or serve it on its own). It reads the raw body, verifies it, runs
``handler(webhook)`` once per ``webhook-id`` and answers:

* ``204`` — handled now, or a duplicate already handled (the sender stops either way);
* ``401`` — a missing or wrong signature or a stale timestamp (final for the sender);
* ``405`` — not a POST; ``413`` — a body over ``max_body`` bytes;
* ``503`` with ``Retry-After`` — the same id is being handled right now elsewhere;
* ``500`` — the handler raised: the id is released and the sender tries again.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from eventbus.webhooks.receiver import Admission, ReceivedWebhook, WebhookReceiver
from eventbus.webhooks.signing import SignatureError

__all__ = ["webhook_app"]

log = logging.getLogger("eventbus.webhooks")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def webhook_app(
    receiver: WebhookReceiver,
    handler: Callable[[ReceivedWebhook], Awaitable[None]],
    *,
    max_body: int = 1 << 20,
) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] != "POST":
            await _answer(send, 405, b"POST only")
            return
        body = await _read(receive, max_body)
        if body is None:
            await _answer(send, 413, b"body too large")
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            webhook = receiver.verify(body, headers)
        except SignatureError as exc:
            await _answer(send, 401, str(exc).encode())
            return
        owner = uuid.uuid4().hex
        admission, wait = await receiver.admit(webhook, owner)
        if admission is Admission.BUSY:
            retry = [(b"retry-after", str(math.ceil(wait)).encode())]
            await _answer(send, 503, b"being handled", retry)
            return
        if admission is Admission.FIRST:
            try:
                await handler(webhook)
            except Exception:
                await receiver.failed(webhook, owner)
                log.exception("webhook %s: the handler failed; the sender will retry", webhook.id)
                await _answer(send, 500, b"handler failed")
                return
            await receiver.done(webhook, owner)
        await _answer(send, 204, b"")

    return app


async def _read(receive: Receive, limit: int) -> bytes | None:
    chunks: list[bytes] = []
    size, more = 0, True
    while more:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


async def _answer(
    send: Send, status: int, text: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    listed = [(b"content-type", b"text/plain"), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": listed})
    await send({"type": "http.response.body", "body": text})
