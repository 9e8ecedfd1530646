"""The adapter's Lua scripts: every settle but a plain ack, the delayed mover, replay and purge.

Each runs atomically on the server. Every settle starts by taking the entry off the group's
pending list; if it was not there (settled already, or claimed and settled by another
consumer) the script does nothing else, so a nack, delayed retry or dead-lettering happens
once even when two consumers race for the same entry. The mover takes due items and removes
them in one script, so two movers (other processes) never move one item twice.

The scripts touch keys of several hash slots: Redis Cluster is not supported.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

__all__ = ["register"]

# KEYS[1] source stream; ARGV[1] group, ARGV[2] entry id, ARGV[3] '1' = XDEL it (retry stream).
_SETTLE = """
local function settle()
  if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return false end
  if ARGV[3] == '1' then redis.call('XDEL', KEYS[1], ARGV[2]) end
  return true
end
"""
_ACK = _SETTLE + "return settle() and 1 or 0"
# KEYS[2] retry stream; ARGV[4..] fields of the copy.
_REQUEUE = (
    _SETTLE
    + """
if not settle() then return 0 end
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 4))
return 1
"""
)
# KEYS[2] delayed zset; ARGV[4] delay ms, ARGV[5] target stream, ARGV[6..] fields. The member
# also names the entry it replaces, so that two copies with equal fields stay two members.
_DELAY = (
    _SETTLE
    + """
if not settle() then return 0 end
local t = redis.call('TIME')
local due = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[4])
local item = {ARGV[5], KEYS[1] .. ' ' .. ARGV[2] .. ' ' .. ARGV[1]}
for i = 6, #ARGV do item[#item + 1] = ARGV[i] end
redis.call('ZADD', KEYS[2], due, cmsgpack.pack(item))
return 1
"""
)
# KEYS[2] dlq stream, KEYS[3] dlq index; ARGV[4] dead-letter id, ARGV[5..] fields.
_DEAD = (
    _SETTLE
    + """
if not settle() then return 0 end
local eid = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 5))
redis.call('HSET', KEYS[3], ARGV[4], eid .. ' ' .. KEYS[2])
return 1
"""
)
# KEYS[1] delayed zset; ARGV[1] limit -> {moved, ms until the next one is due or -1}.
_MOVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, member in ipairs(due) do
  local item = cmsgpack.unpack(member)
  redis.call('XADD', item[1], '*', unpack(item, 3))
  redis.call('ZREM', KEYS[1], member)
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #nxt == 0 then return {#due, -1} end
return {#due, math.max(0, tonumber(nxt[2]) - now)}
"""
# KEYS[1] dlq index, KEYS[2] dlq stream, KEYS[3] target stream; ARGV[1] id, ARGV[2] entry id,
# ARGV[3..] fields of the replayed entry.
_REPLAY = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('XDEL', KEYS[2], ARGV[2])
redis.call('XADD', KEYS[3], '*', unpack(ARGV, 3))
return 1
"""
# KEYS[1] dlq index, KEYS[2] dlq stream; ARGV[1] the field holding the dead-letter id
# -> how many were removed.
_PURGE = """
local entries = redis.call('XRANGE', KEYS[2], '-', '+')
for _, entry in ipairs(entries) do
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == ARGV[1] then redis.call('HDEL', KEYS[1], fields[i + 1]) end
  end
end
redis.call('DEL', KEYS[2])
return #entries
"""

_SCRIPTS = {
    "ack": _ACK,
    "requeue": _REQUEUE,
    "delay": _DELAY,
    "dead": _DEAD,
    "move": _MOVE,
    "replay": _REPLAY,
    "purge": _PURGE,
}


def register(client: aioredis.Redis) -> dict[str, AsyncScript]:
    """Every script by name, registered with ``client`` (loaded on first use, by its SHA)."""
    return {name: client.register_script(text) for name, text in _SCRIPTS.items()}
