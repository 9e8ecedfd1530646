"""``webhook_dependency``: a FastAPI dependency that gives an endpoint a verified webhook.

::

    receive = webhook_dependency(WebhookReceiver(secret, store=store))

    @app.post("/webhooks")
    async def on_webhook(webhook: ReceivedWebhook = Depends(receive)) -> None:
        ...  # runs once per webhook-id

The dependency reads the raw body (``await request.body()``, the bytes that were signed),
verifies it and claims the ``webhook-id``. A bad signature or stale timestamp is answered
``401``; a duplicate of a handled id ``200`` without running the endpoint; an id being
handled right now ``503`` with ``Retry-After``. When the endpoint returns, the id is marked
done; when it raises, the id is released, so the sender's retry runs it again.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator, Callable

from fastapi import HTTPException, Request

from eventbus.webhooks.receiver import Admission, ReceivedWebhook, WebhookReceiver
from eventbus.webhooks.signing import SignatureError

__all__ = ["webhook_dependency"]


def webhook_dependency(
    receiver: WebhookReceiver,
) -> Callable[[Request], AsyncIterator[ReceivedWebhook]]:
    async def verified_webhook(request: Request) -> AsyncIterator[ReceivedWebhook]:
        body = await request.body()
        try:
            webhook = receiver.verify(body, dict(request.headers))
        except SignatureError as exc:
            raise HTTPException(status_code=401, detail=str(exc)) from None
        owner = uuid.uuid4().hex
        admission, wait = await receiver.admit(webhook, owner)
        if admission is Admission.DUPLICATE:
            raise HTTPException(status_code=200, detail="already received")
        if admission is Admission.BUSY:
            headers = {"retry-after": str(math.ceil(wait))}
            raise HTTPException(status_code=503, detail="being handled", headers=headers)
        try:
            yield webhook
        except BaseException:
            await receiver.failed(webhook, owner)
            raise
        await receiver.done(webhook, owner)

    return verified_webhook
