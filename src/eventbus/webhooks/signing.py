"""Standard Webhooks signatures: secrets, the ``webhook-signature`` header, verifying one.

The HMAC itself is the ``standardwebhooks`` package's (``Webhook.sign``: HMAC-SHA256 over
``{id}.{timestamp}.{raw body}``, base64, prefixed ``v1,``). Verifying is done here on top of
it, because the package's own ``verify`` reads the wall clock with a fixed 5-minute tolerance
and fails with a bare ``ValueError`` on a malformed signature list; here the tolerance and the
clock are the caller's, every malformed entry is skipped, and the comparison is
``hmac.compare_digest`` on the decoded bytes (constant time).

A secret is ``whsec_`` followed by the base64 of 32 random bytes (the specification allows
24 to 64). Its text never appears in a log line or a ``repr``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets as random_source
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone

from standardwebhooks.webhooks import Webhook

from eventbus.errors import ConfigurationError, EventBusError

__all__ = [
    "SECRET_PREFIX",
    "SignatureError",
    "generate_secret",
    "sign",
    "signature_headers",
    "verify",
]

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32


class SignatureError(EventBusError):
    """A webhook request whose headers, timestamp or signature do not verify."""


def generate_secret() -> str:
    """A new endpoint secret: ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(random_source.token_bytes(SECRET_BYTES)).decode()


def check_secret(secret: str) -> str:
    """``secret`` unchanged if it is a usable ``whsec_`` secret; a clear error otherwise (the
    error never quotes the secret)."""
    if not isinstance(secret, str) or not secret.startswith(SECRET_PREFIX):
        raise ConfigurationError("a webhook secret is 'whsec_' followed by base64 text")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ConfigurationError("a webhook secret must be 'whsec_' + valid base64") from None
    if not 24 <= len(key) <= 64:
        raise ConfigurationError(f"a webhook secret must hold 24 to 64 bytes, not {len(key)}")
    return secret


def sign(secrets: Iterable[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: one ``v1,<base64>`` per secret, space-separated."""
    moment = datetime.fromtimestamp(timestamp, timezone.utc)
    text = body.decode("utf-8")
    return " ".join(Webhook(s).sign(msg_id, moment, text) for s in secrets)


def signature_headers(
    secrets: str | Iterable[str], msg_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """The three Standard Webhooks headers of a request (also for testing a receiver)."""
    listed = [secrets] if isinstance(secrets, str) else list(secrets)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(listed, msg_id, timestamp, body),
    }


def verify(
    secrets: Iterable[str],
    body: bytes,
    headers: Mapping[str, str],
    *,
    now: float,
    tolerance: float,
) -> tuple[str, int]:
    """Check a request's signature against the raw ``body``; returns (webhook-id, timestamp).

    Raises :class:`SignatureError` when a header is missing, the timestamp is further than
    ``tolerance`` seconds from ``now`` (either way), or no ``v1`` entry matches any secret.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    msg_id = lowered.get("webhook-id", "")
    stamp = lowered.get("webhook-timestamp", "")
    listed = lowered.get("webhook-signature", "")
    if not (msg_id and stamp and listed):
        raise SignatureError("missing webhook-id, webhook-timestamp or webhook-signature")
    if not (stamp.isascii() and stamp.isdigit()):
        raise SignatureError("webhook-timestamp is not whole unix seconds")
    timestamp = int(stamp)
    if abs(now - timestamp) > tolerance:
        raise SignatureError(
            f"webhook-timestamp is {now - timestamp:+.0f}s from now, beyond the tolerance "
            f"of {tolerance:g}s (a replayed or delayed request)"
        )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise SignatureError("the body is not UTF-8, so no signature can match") from None
    offered = _offered(listed)
    moment = datetime.fromtimestamp(timestamp, timezone.utc)
    for secret in secrets:
        expected = base64.b64decode(Webhook(secret).sign(msg_id, moment, text).split(",", 1)[1])
        # Every offered entry is compared, whatever matched: the time taken does not depend
        # on which one did.
        matched = [hmac.compare_digest(expected, candidate) for candidate in offered]
        if any(matched):
            return msg_id, timestamp
    raise SignatureError("no webhook-signature entry matches the endpoint's secret")


def _offered(listed: str) -> list[bytes]:
    """The decoded ``v1`` signatures of a header; malformed entries are skipped."""
    found = []
    for entry in listed.split():
        version, _, value = entry.partition(",")
        if version != "v1" or not value:
            continue
        try:
            found.append(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError):
            continue
    return found
