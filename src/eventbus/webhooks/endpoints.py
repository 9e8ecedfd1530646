"""Endpoints: where a tenant's webhooks go, which events, and the secrets that sign them.

A secret is generated when the endpoint is registered (or given, ``whsec_…``) and shown in
the returned :class:`Endpoint`; it is stored in the endpoints table and never logged.
:meth:`Endpoints.rotate_secret` adds a new secret and keeps the previous ones valid for
``overlap`` seconds: meanwhile every request carries one signature per valid secret, so the
receiver can switch to the new secret whenever it likes within that window, without a
request failing.
"""

from __future__ import annotations

import builtins
import dataclasses
import json
import secrets as random_source
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from eventbus.errors import ConfigurationError, EventBusError
from eventbus.topics import is_pattern, topic_matches, validate_type_name
from eventbus.webhooks.schema import Tables
from eventbus.webhooks.signing import check_secret, generate_secret

__all__ = ["DEFAULT_OVERLAP", "Endpoint", "EndpointNotFound", "Endpoints"]

DEFAULT_OVERLAP = 86400.0
"""How long the previous secret stays valid after a rotation (seconds)."""


class EndpointNotFound(EventBusError):
    def __init__(self, endpoint_id: str) -> None:
        super().__init__(f"no webhook endpoint {endpoint_id!r}")
        self.endpoint_id = endpoint_id


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """A registered endpoint. ``secrets`` is every secret that still signs (newest first);
    it is left out of the ``repr``."""

    id: str
    tenant: str
    url: str
    event_types: tuple[str, ...]
    enabled: bool
    disabled_reason: str | None
    description: str
    created_at: float
    secrets: tuple[str, ...] = dataclasses.field(repr=False, default=())
    secret_expiry: tuple[float | None, ...] = dataclasses.field(repr=False, default=())

    @property
    def secret(self) -> str:
        """The newest secret: the one to give the receiver."""
        return self.secrets[0]

    def accepts(self, event_type: str) -> bool:
        return any(topic_matches(p, event_type) for p in self.event_types)

    def signing_secrets(self, now: float) -> list[str]:
        """The secrets that sign a request sent at ``now`` (several during a rotation)."""
        return [
            s
            for s, until in zip(self.secrets, self.secret_expiry, strict=True)
            if until is None or until > now
        ]


class Endpoints:
    """Register, list, rotate, enable and disable endpoints (the endpoints table)."""

    def __init__(
        self, engine: AsyncEngine, tables: Tables, now: Callable[[], float], channel: str
    ) -> None:
        self.engine, self.table, self.now = engine, tables.endpoints, now
        self._wake = engine.dialect.name == "postgresql"
        self._notify = sa.select(sa.func.pg_notify(channel, ""))

    async def add(
        self,
        tenant: str,
        url: str,
        event_types: Sequence[str],
        *,
        secret: str | None = None,
        description: str = "",
    ) -> Endpoint:
        """Register an endpoint of ``tenant`` receiving the events whose type matches one of
        ``event_types`` (names or patterns: ``order.*``, ``#`` for every event)."""
        if not tenant or not isinstance(tenant, str):
            raise ConfigurationError("an endpoint needs a tenant (whose endpoint it is)")
        _check_url(url)
        types = _check_types(event_types)
        key = check_secret(secret) if secret is not None else generate_secret()
        now = self.now()
        row = {
            "id": "ep_" + random_source.token_hex(12),
            "tenant": tenant,
            "url": url,
            "event_types": json.dumps(types),
            "secrets": json.dumps([{"secret": key, "expires_at": None}]),
            "enabled": True,
            "disabled_reason": None,
            "description": description,
            "created_at": now,
            "updated_at": now,
        }
        async with self.engine.begin() as connection:
            await connection.execute(sa.insert(self.table).values(**row))
        return endpoint_of(row)

    async def get(self, endpoint_id: str) -> Endpoint:
        async with self.engine.connect() as connection:
            query = sa.select(self.table).where(self.table.c.id == endpoint_id)
            row = (await connection.execute(query)).first()
        if row is None:
            raise EndpointNotFound(endpoint_id)
        return endpoint_of(row._mapping)

    async def list(self, *, tenant: str | None = None) -> list[Endpoint]:
        """Every endpoint (of ``tenant``), oldest first."""
        query = sa.select(self.table).order_by(self.table.c.created_at, self.table.c.id)
        if tenant is not None:
            query = query.where(self.table.c.tenant == tenant)
        async with self.engine.connect() as connection:
            return [endpoint_of(row._mapping) for row in await connection.execute(query)]

    async def matching(self, event_type: str) -> builtins.list[Endpoint]:
        """The endpoints (enabled or not) that take ``event_type``."""
        return [e for e in await self.list() if e.accepts(event_type)]

    async def rotate_secret(
        self, endpoint_id: str, *, overlap: float = DEFAULT_OVERLAP, secret: str | None = None
    ) -> Endpoint:
        """Add a new secret (generated unless given); the previous ones stay valid for
        ``overlap`` seconds more (0: the new one alone signs from now on)."""
        if overlap < 0:
            raise ConfigurationError("rotate_secret(overlap=...) must be >= 0 seconds")
        key = check_secret(secret) if secret is not None else generate_secret()
        now = self.now()
        current = await self.get(endpoint_id)
        kept = [
            {
                "secret": s,
                "expires_at": now + overlap if until is None else min(until, now + overlap),
            }
            for s, until in zip(current.secrets, current.secret_expiry, strict=True)
            if (until is None or until > now) and overlap > 0
        ]
        listed = [{"secret": key, "expires_at": None}, *kept]
        await self._update(endpoint_id, secrets=json.dumps(listed))
        return await self.get(endpoint_id)

    async def enable(self, endpoint_id: str) -> None:
        """Deliver to the endpoint again (its waiting deliveries go at once)."""
        await self._update(endpoint_id, enabled=True, disabled_reason=None, wake=True)

    async def disable(self, endpoint_id: str, reason: str = "disabled by an operator") -> None:
        """Stop delivering to the endpoint; its deliveries wait, nothing is dropped."""
        await self._update(endpoint_id, enabled=False, disabled_reason=reason)

    async def set_url(self, endpoint_id: str, url: str) -> None:
        _check_url(url)
        await self._update(endpoint_id, url=url)

    async def remove(self, endpoint_id: str) -> None:
        """Forget the endpoint (its deliveries and log stay, for the record)."""
        async with self.engine.begin() as connection:
            statement = sa.delete(self.table).where(self.table.c.id == endpoint_id)
            if not (await connection.execute(statement)).rowcount:
                raise EndpointNotFound(endpoint_id)

    async def _update(self, endpoint_id: str, *, wake: bool = False, **values: Any) -> None:
        statement = (
            sa.update(self.table)
            .where(self.table.c.id == endpoint_id)
            .values(**values, updated_at=self.now())
        )
        async with self.engine.begin() as connection:
            if not (await connection.execute(statement)).rowcount:
                raise EndpointNotFound(endpoint_id)
            if wake and self._wake:  # its waiting deliveries are due: wake the senders
                await connection.execute(self._notify)


def endpoint_of(row: Any) -> Endpoint:
    listed = json.loads(row["secrets"])
    return Endpoint(
        id=row["id"],
        tenant=row["tenant"],
        url=row["url"],
        event_types=tuple(json.loads(row["event_types"])),
        enabled=bool(row["enabled"]),
        disabled_reason=row["disabled_reason"],
        description=row["description"] or "",
        created_at=float(row["created_at"]),
        secrets=tuple(item["secret"] for item in listed),
        secret_expiry=tuple(item["expires_at"] for item in listed),
    )


def _check_url(url: str) -> None:
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(f"an endpoint URL is http:// or https:// with a host, not {url!r}")


def _check_types(event_types: Sequence[str]) -> list[str]:
    if isinstance(event_types, str) or not event_types:
        raise ConfigurationError(
            "event_types lists the type names or patterns an endpoint receives "
            "(['order.created'], ['order.*'], ['#'] for all)"
        )
    for name in event_types:
        words = [w for w in name.split(".") if w not in ("*", "#")]
        literal = ".".join(words) if is_pattern(name) else name
        validate_type_name(literal or "x", f"endpoint event type {name!r}; word")
    return list(event_types)
