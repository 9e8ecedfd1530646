"""The address guard: webhooks go to the public internet only, unless explicitly allowed.

An endpoint URL is someone else's input, so a sender that POSTs wherever it is told can be
made to reach the sender's own network (server-side request forgery): the loopback interface,
private ranges, link-local addresses and the cloud metadata service (``169.254.169.254``,
``fd00:ec2::254``). The guard resolves the host *itself*, refuses the request when any address
it resolves to is not a global unicast address (``ipaddress``'s ``is_global``; multicast is
refused too), and the sender then connects to the address that was checked — the URL's host
is kept as the ``Host`` header and the TLS server name — so a DNS answer that changes between
the check and the connection (DNS rebinding) cannot bypass it.

``AddressGuard(allow=["127.0.0.0/8"])`` lets chosen networks through (a test's local server,
a partner on a private link); ``AddressGuard.allow_all()`` turns the guard off.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

from eventbus.errors import ConfigurationError, EventBusError

__all__ = ["AddressGuard", "BlockedAddress", "Target", "Unresolved"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class BlockedAddress(EventBusError):
    """The endpoint's host is, or resolves to, an address the guard refuses."""


class Unresolved(EventBusError):
    """The endpoint's host does not resolve right now (tried again later)."""


class Target:
    """Where one request goes: ``pinned_url`` names the checked ``address``; ``host`` is the
    URL's own host (and port), for the ``Host`` header and the TLS server name."""

    __slots__ = ("address", "host", "pinned_url", "url")

    def __init__(self, url: str, host: str, address: str, pinned_url: str) -> None:
        self.url, self.host, self.address, self.pinned_url = url, host, address, pinned_url


class AddressGuard:
    """Refuses non-global addresses except the networks in ``allow``."""

    def __init__(self, *, allow: Iterable[str] = (), check: bool = True) -> None:
        try:
            self.allowed: tuple[IPNetwork, ...] = tuple(
                ipaddress.ip_network(n, strict=False) for n in allow
            )
        except ValueError as exc:
            raise ConfigurationError(f"AddressGuard(allow=...): {exc}") from None
        self.check = check

    @classmethod
    def allow_all(cls) -> AddressGuard:
        """No guard at all (a closed network where every endpoint is trusted)."""
        return cls(check=False)

    def refuses(self, address: IPAddress) -> str | None:
        """Why ``address`` is refused, or ``None`` when it may be used."""
        if not self.check or any(address in network for network in self.allowed):
            return None
        mapped = getattr(address, "ipv4_mapped", None)
        if mapped is not None:
            return self.refuses(mapped)
        if address.is_multicast:
            return f"{address} is a multicast address"
        if not address.is_global:
            kind = (
                "loopback"
                if address.is_loopback
                else "link-local (metadata)"
                if address.is_link_local
                else "private or reserved"
            )
            return f"{address} is a {kind} address"
        return None

    async def resolve(self, url: str) -> Target:
        """Resolve ``url``'s host, check every address, and pin the first one."""
        parts = urlsplit(url)
        host = parts.hostname
        if parts.scheme not in ("http", "https") or not host:
            raise BlockedAddress(f"{parts.scheme or '?'}:// URLs are not delivered to")
        named = f"[{host}]" if ":" in host else host
        if not self.check:  # no guard: the client resolves and connects as it likes
            return Target(url, named + f":{parts.port}" * bool(parts.port), host, url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addresses = await _addresses(host, port)
        for address in addresses:
            why = self.refuses(address)
            if why is not None:
                raise BlockedAddress(
                    f"refusing to deliver to {host}: {why} (allow it with AddressGuard(allow=...))"
                )
        chosen = addresses[0]
        shown = f"[{chosen}]" if chosen.version == 6 else str(chosen)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@" * bool(userinfo) + shown + f":{parts.port}" * bool(parts.port)
        pinned = parts._replace(netloc=netloc).geturl()
        return Target(url, named + f":{parts.port}" * bool(parts.port), str(chosen), pinned)


async def _addresses(host: str, port: int) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise Unresolved(f"cannot resolve {host}: {exc}") from None
    unique: list[IPAddress] = []
    for *_, sockaddr in found:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in unique:
            unique.append(address)
    if not unique:
        raise Unresolved(f"{host} resolves to no address")
    return unique
