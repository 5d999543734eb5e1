"""Lua scripts of the Redis backend. Each touches keys of one hash slot only.

A presence entry is the string ``<node_id>|<conn_id>|<since_ms>``: node ids and conn ids
never contain "|" (config validation and new_conn_id guarantee it), and client ids are only
ever hash fields and set members, never part of a key or a channel name.
"""

from typing import Final

# KEYS: presence hash, own node set
# ARGV: client_id, entry, node_id, max_cluster (0 = none), node-set prefix, node-channel
#       prefix, kick envelope prefix, publish command
# Returns {status, previous entry or false}; status -1 = cluster limit reached.
REGISTER: Final = """
local prev = redis.call('HGET', KEYS[1], ARGV[1])
if not prev then
  local limit = tonumber(ARGV[4])
  if limit > 0 and redis.call('HLEN', KEYS[1]) >= limit then
    return {-1, false}
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
if prev then
  local node, conn = string.match(prev, '^([^|]*)|([^|]*)|')
  if node and node ~= ARGV[3] then
    redis.call('SREM', ARGV[5] .. node, ARGV[1])
    redis.call(ARGV[8], ARGV[6] .. node, ARGV[7] .. cmsgpack.pack(conn))
  end
  return {1, prev}
end
return {0, false}
"""

# KEYS: presence hash, own node set. ARGV: client_id, conn_id. Returns 1 if removed.
UNREGISTER: Final = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return 0 end
local node, conn = string.match(cur, '^([^|]*)|([^|]*)|')
if conn ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[2], ARGV[1])
return 1
"""

# KEYS: presence hash. ARGV: client_id, node-channel prefix, envelope, publish command.
# Returns the number of subscribers that received it (0 when no node owns the client).
ROUTE: Final = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return 0 end
local node = string.match(cur, '^([^|]*)|')
if not node then return 0 end
return redis.call(ARGV[4], ARGV[2] .. node, ARGV[3])
"""

# KEYS: nodes zset. ARGV: node_id, ttl_ms.
# Returns {1 if this node was (re)added rather than refreshed, expired node ids...}.
KEEPALIVE: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local added = redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 16)
table.insert(expired, 1, added)
return expired
"""

# KEYS: presence hash, node set of the dead node. ARGV: dead node id, batch size.
# Pops up to a batch of the dead node's clients; removes those still naming that node.
# Returns {removed, remaining members}.
REAP_BATCH: Final = """
local members = redis.call('SPOP', KEYS[2], tonumber(ARGV[2]))
local removed = 0
for _, cid in ipairs(members) do
  local cur = redis.call('HGET', KEYS[1], cid)
  if cur and string.match(cur, '^([^|]*)|') == ARGV[1] then
    redis.call('HDEL', KEYS[1], cid)
    removed = removed + 1
  end
end
return {removed, redis.call('SCARD', KEYS[2])}
"""

# KEYS: nodes zset. ARGV: node id. Removes it only if its deadline has passed.
FORGET_NODE: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) > now then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
"""

# KEYS: nodes zset. Returns live node ids.
LIVE_NODES: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
"""

# KEYS: presence hash, own node set. ARGV: node_id, then (client_id, entry) pairs.
# Re-registers entries that are absent or still ours; returns client ids now held by
# another node (their local sockets are stale and must close).
RESYNC: Final = """
local lost = {}
for i = 2, #ARGV, 2 do
  local cid = ARGV[i]
  local cur = redis.call('HGET', KEYS[1], cid)
  local node = cur and string.match(cur, '^([^|]*)|')
  if (not cur) or node == ARGV[1] then
    redis.call('HSET', KEYS[1], cid, ARGV[i + 1])
    redis.call('SADD', KEYS[2], cid)
  else
    table.insert(lost, cid)
  end
end
return lost
"""
