"""Commands packed by hiredis's C packer instead of redis-py's Python one.

redis-py's asyncio connections write each command with a Python loop that encodes its
arguments one by one: 4.4 us for the ``XADD`` of one structured CloudEvent, measured on the
benchmark machine, and as much again for every hundred ids of an ``XACK``. hiredis, which the
``redis`` extra installs for its reply parser, packs the same arguments into the same bytes
in C (0.6 us for that ``XADD``). A client the adapter creates gets connections that pack with
it; a client passed in (``RedisBroker(client=...)``) is left as it is, and so is one whose
encoding is not strict UTF-8 (hiredis writes text as UTF-8).

What hiredis does not take (a bool, None, any other type) and command names with a space in
them (``"CLIENT SETNAME"``, which redis-py splits) are packed by redis-py as before, so they
fail or succeed exactly as they did.
"""

from __future__ import annotations

import codecs
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection

try:
    import hiredis
except ImportError:  # pragma: no cover - the redis extra installs it
    HIREDIS = False
else:
    HIREDIS = True

__all__ = ["pack_with_hiredis"]


class _HiredisPacking(AbstractConnection):
    """Mixed in before a connection class: ``pack_command`` in C where hiredis takes it."""

    def pack_command(self, *args: Any) -> list[bytes]:
        name = args[0]
        if (type(name) is str and " " not in name) or (type(name) is bytes and b" " not in name):
            try:
                return [hiredis.pack_command(args)]
            except TypeError:  # an argument hiredis does not take: redis-py names it
                pass
        return super().pack_command(*args)


_PACKED: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def pack_with_hiredis(client: aioredis.Redis) -> bool:
    """Make the connections ``client`` opens from now on pack with hiredis; False (and the
    client unchanged) when hiredis is missing or the client does not encode text as UTF-8."""
    pool = client.connection_pool
    options = pool.connection_kwargs
    encoding = codecs.lookup(options.get("encoding", "utf-8")).name
    if not HIREDIS or encoding != "utf-8" or options.get("encoding_errors", "strict") != "strict":
        return False
    cls = pool.connection_class
    if not issubclass(cls, _HiredisPacking):
        packed = _PACKED.get(cls)
        if packed is None:
            packed = _PACKED[cls] = type(f"Hiredis{cls.__name__}", (_HiredisPacking, cls), {})
        pool.connection_class = packed
    return True
