"""One attempt: check the address, sign, POST, and say what the answer means.

The request carries the Standard Webhooks headers — ``webhook-id`` (the event id, the same on
every attempt and replay), ``webhook-timestamp`` (this attempt's time: each attempt is signed
afresh, so a retry days later is still within the receiver's tolerance) and
``webhook-signature`` (one ``v1,…`` per valid secret) — and the stored body, byte for byte.
Redirects are not followed; the whole attempt, connection included, has ``timeout`` seconds.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx

from eventbus.redact import redact_text
from eventbus.webhooks.endpoints import Endpoint
from eventbus.webhooks.guard import AddressGuard, BlockedAddress
from eventbus.webhooks.policy import Outcome, Verdict, judge, retry_after
from eventbus.webhooks.signing import signature_headers

__all__ = ["DEFAULT_TIMEOUT", "AttemptResult", "Poster"]

DEFAULT_TIMEOUT = 15.0
USER_AGENT = "eventbus-webhooks"


@dataclasses.dataclass(frozen=True)
class AttemptResult:
    verdict: Verdict
    latency: float
    status: int | None = None
    error: str | None = None
    """Why it failed, without secrets (``None`` when delivered)."""


class Poster:
    """Sends attempts through one ``httpx.AsyncClient`` (made here unless given: no
    redirects, no proxies from the environment, which would defeat the address pinning)."""

    def __init__(
        self,
        *,
        guard: AddressGuard,
        timeout: float = DEFAULT_TIMEOUT,
        client: httpx.AsyncClient | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.guard, self.timeout, self.now = guard, timeout, now
        self._own = client is None
        self.client = client or httpx.AsyncClient(
            follow_redirects=False,
            trust_env=False,
            timeout=timeout,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=50),
        )

    async def close(self) -> None:
        if self._own:
            await self.client.aclose()

    def headers(self, endpoint: Endpoint, event_id: str, body: bytes) -> dict[str, str]:
        """The signed headers of a request sent now."""
        now = self.now()
        signed = signature_headers(endpoint.signing_secrets(now), event_id, int(now), body)
        return {"content-type": "application/json", "user-agent": USER_AGENT, **signed}

    async def post(self, endpoint: Endpoint, event_id: str, body: bytes) -> AttemptResult:
        started = time.monotonic()
        try:
            with anyio.fail_after(self.timeout):
                target = await self.guard.resolve(endpoint.url)
                status, answer = await self._send(target, endpoint, event_id, body)
        except BlockedAddress as exc:
            return AttemptResult(Verdict(Outcome.FINAL), time.monotonic() - started, None, str(exc))
        except TimeoutError:
            late = f"no answer within {self.timeout:g}s"
            return AttemptResult(Verdict(Outcome.RETRY), time.monotonic() - started, None, late)
        except Exception as exc:  # connection refused, reset, TLS: the receiver's side
            failed = redact_text(f"{type(exc).__name__}: {exc}")
            return AttemptResult(Verdict(Outcome.RETRY), time.monotonic() - started, None, failed)
        latency = time.monotonic() - started
        verdict = judge(status)
        if verdict.outcome is Outcome.RETRY and status in (408, 429):
            verdict = dataclasses.replace(verdict, retry_after=retry_after(answer, self.now()))
        error = None if verdict.outcome is Outcome.DELIVERED else _why(status)
        return AttemptResult(verdict, latency, status, error)

    async def _send(
        self, target: Any, endpoint: Endpoint, event_id: str, body: bytes
    ) -> tuple[int, Mapping[str, str]]:
        headers = {"host": target.host, **self.headers(endpoint, event_id, body)}
        extensions: dict[str, Any] = {}
        if urlsplit(endpoint.url).scheme == "https":
            extensions["sni_hostname"] = urlsplit(endpoint.url).hostname or ""
        request = self.client.build_request(
            "POST",
            target.pinned_url,
            content=body,
            headers=headers,
            extensions=extensions,
            timeout=self.timeout,
        )
        response = await self.client.send(request, stream=True, follow_redirects=False)
        try:
            return response.status_code, dict(response.headers)
        finally:
            await response.aclose()


def _why(status: int) -> str:
    if 300 <= status < 400:
        return f"HTTP {status}: a redirect (not followed)"
    return f"HTTP {status}"
