"""Lua scripts of the Redis backend. Each touches keys of one hash slot only.

A presence entry is the string ``<node_id>|<conn_id>|<since_ms>``: node ids and conn ids
never contain "|" (config validation and new_conn_id guarantee it). Client ids, group and
stream names arrive as arguments and are only used as hash fields, set members, or after a
fixed key prefix (see keys.py); they are never patterns.
"""

from typing import Final

# A Lua function prepended to the scripts that end a client's group memberships: removes
# the client from each of its groups (publishing a "leave" event for each when the events
# channel is not ''), deletes its group set, and returns the groups it left.
_LEAVE_ALL: Final = """
local function leave_all(cg, group_prefix, cid, channel, event_prefix, node, publish)
  local groups = redis.call('SMEMBERS', cg)
  for _, g in ipairs(groups) do
    redis.call('SREM', group_prefix .. g, cid)
    if channel ~= '' then
      local ev = cjson.encode({event = 'leave', client_id = cid, group = g, node_id = node})
      redis.call(publish, channel, event_prefix .. cmsgpack.pack(ev) .. '\\192\\192')
    end
  end
  redis.call('DEL', cg)
  return groups
end
"""

# KEYS: presence hash, own node set[, client's group set (when ARGV[9] is '1')]
# ARGV: client_id, entry, node_id, max_cluster (0 = none), node-set prefix, node-channel
#       prefix, kick envelope prefix, publish command, '1' to end the groups of a replaced
#       connection (history off, one slot), group-set prefix, events channel, event prefix
# Returns {status, previous entry or false}; status -1 = cluster limit reached.
REGISTER: Final = _LEAVE_ALL + """
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
  if ARGV[9] == '1' then
    leave_all(KEYS[3], ARGV[10], ARGV[1], ARGV[11], ARGV[12], ARGV[3], ARGV[8])
  end
  return {1, prev}
end
return {0, false}
"""

# KEYS: presence hash, own node set.
# ARGV: node_id, node-set prefix, node-channel prefix, publish command, then (client_id,
#       entry, kick envelope prefix, '1' if it may claim) quadruples.
# Re-registers entries that are absent or still ours. Where another node holds a client,
# that entry stays, unless ours may claim (it was admitted while this node was cut off, so
# it never overwrote anything) and connected later: then it takes the client over and the
# other node gets a KICK for its older socket. Returns the client ids another node keeps
# (our local sockets of them are stale and must close).
RESYNC: Final = """
local lost = {}
for i = 5, #ARGV, 4 do
  local cid, entry = ARGV[i], ARGV[i + 1]
  local cur = redis.call('HGET', KEYS[1], cid)
  local node, conn, since
  if cur then node, conn, since = string.match(cur, '^([^|]*)|([^|]*)|(%d+)$') end
  local mine = tonumber(string.match(entry, '|(%d+)$'))
  if (not cur) or node == ARGV[1] then
    redis.call('HSET', KEYS[1], cid, entry)
    redis.call('SADD', KEYS[2], cid)
  elseif ARGV[i + 3] == '1' and node and since and mine and mine > tonumber(since) then
    redis.call('HSET', KEYS[1], cid, entry)
    redis.call('SADD', KEYS[2], cid)
    redis.call('SREM', ARGV[2] .. node, cid)
    redis.call(ARGV[4], ARGV[3] .. node, ARGV[i + 2] .. cmsgpack.pack(conn))
  else
    table.insert(lost, cid)
  end
end
return lost
"""

# KEYS: session hash, away zset, meta of "all", meta of "c:<client>", client's group set.
# ARGV: client id, '1' for a fresh session, group-set prefix, events channel, event
#       prefix, node id, publish command.
# The session lives while connected. A fresh one first ends whatever the client had (its
# groups and session data), then records where the client's streams stand now (its replay
# baselines).
OPEN_SESSION: Final = _LEAVE_ALL + """
if ARGV[2] == '1' then
  leave_all(KEYS[5], ARGV[3], ARGV[1], ARGV[4], ARGV[5], ARGV[6], ARGV[7])
  redis.call('DEL', KEYS[1])
end
redis.call('HSET', KEYS[1], '_', '1')
redis.call('PERSIST', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if ARGV[2] == '1' then
  local streams = {'all', 'c:' .. ARGV[1]}
  for i = 3, 4 do
    local epoch = redis.call('HGET', KEYS[i], 'epoch')
    local offset = redis.call('HGET', KEYS[i], 'offset') or '0'
    redis.call('HSET', KEYS[1], 'p:' .. streams[i - 2], offset .. '|' .. (epoch or ''))
  end
end
return 1
"""

# KEYS: client's group set, session hash, away zset.
# ARGV: client id, group-set prefix, events channel ('' = none), event prefix, node id,
#       publish command. Ends the session: leaves every group. Returns the groups left.
END_SESSION: Final = _LEAVE_ALL + """
local groups = leave_all(KEYS[1], ARGV[2], ARGV[1], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
return groups
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


# KEYS: presence hash, dead node's set. ARGV: dead node id, batch size.
# Like REAP_BATCH but returns {remaining, removed client ids...} so sessions can be suspended.
REAP_CLIENTS: Final = """
local members = redis.call('SPOP', KEYS[2], tonumber(ARGV[2]))
local out = {0}
for _, cid in ipairs(members) do
  local cur = redis.call('HGET', KEYS[1], cid)
  if cur and string.match(cur, '^([^|]*)|') == ARGV[1] then
    redis.call('HDEL', KEYS[1], cid)
    table.insert(out, cid)
  end
end
out[1] = redis.call('SCARD', KEYS[2])
return out
"""

# KEYS: away zset. ARGV: ttl_ms, session-key prefix, client ids...
# The clients left (or their node died): their sessions end after ttl unless they return.
SUSPEND: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i = 3, #ARGV do
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[i])
  redis.call('PEXPIRE', ARGV[2] .. ARGV[i], ttl + 1000)
end
return #ARGV - 2
"""

# KEYS: session hash, client's group set, away zset. ARGV: client id.
# Returns {exists, groups, field/value pairs...} (user data "u:<key>", baselines
# "p:<stream>" = "offset|epoch") for a live or resumable session.
LOAD_SESSION: Final = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
local out = {1, redis.call('SMEMBERS', KEYS[2])}
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local prefix = string.sub(fields[i], 1, 2)
  if prefix == 'u:' or prefix == 'p:' then
    table.insert(out, fields[i])
    table.insert(out, fields[i + 1])
  end
end
return out
"""



# KEYS: away zset, presence hash. ARGV: limit, client-group-set prefix, group-set prefix,
#       session prefix, events channel ('' = none), event prefix, node id, publish command.
# Ends the sessions whose deadline passed (unless the client is back), leaving their groups
# (with "leave" events, as END_SESSION). Returns the client ids whose sessions ended.
SWEEP: Final = _LEAVE_ALL + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local ended = {}
for _, cid in ipairs(due) do
  redis.call('ZREM', KEYS[1], cid)
  if not redis.call('HGET', KEYS[2], cid) then
    leave_all(ARGV[2] .. cid, ARGV[3], cid, ARGV[5], ARGV[6], ARGV[7], ARGV[8])
    redis.call('DEL', ARGV[4] .. cid)
    table.insert(ended, cid)
  end
end
return ended
"""

# KEYS: group set, client's group set, client's session hash, group stream meta.
# ARGV: client id, group, events channel ('' = none), event prefix, node id, publish
#       command, 'join' or 'leave'. A join records the group stream's baseline position in
#       the client's session (when it has one).
MEMBERSHIP: Final = """
local changed
if ARGV[7] == 'join' then
  changed = redis.call('SADD', KEYS[1], ARGV[1])
  redis.call('SADD', KEYS[2], ARGV[2])
  if changed == 1 and redis.call('EXISTS', KEYS[3]) == 1 then
    local epoch = redis.call('HGET', KEYS[4], 'epoch')
    local offset = redis.call('HGET', KEYS[4], 'offset') or '0'
    redis.call('HSET', KEYS[3], 'p:g:' .. ARGV[2], offset .. '|' .. (epoch or ''))
  end
else
  changed = redis.call('SREM', KEYS[1], ARGV[1])
  redis.call('SREM', KEYS[2], ARGV[2])
  redis.call('HDEL', KEYS[3], 'p:g:' .. ARGV[2])
end
if changed == 1 and ARGV[3] ~= '' then
  local ev = cjson.encode({event = ARGV[7], client_id = ARGV[1], group = ARGV[2],
                           node_id = ARGV[5]})
  redis.call(ARGV[6], ARGV[3], ARGV[4] .. cmsgpack.pack(ev) .. '\\192\\192')
end
return changed
"""

# KEYS: stream, meta hash, presence hash, session hash.
# ARGV: target kind, envelope prefix, max entries, stream ttl ms, meta ttl ms, new epoch,
#       publish command, channel (all/group), client id, node-channel prefix, owner node
#       ('' = look it up in the presence hash; '-' = known absent).
# Returns {offset, epoch, receivers}; {0, '', 0} when a client target is gone for good.
SEQUENCE: Final = """
local channel = ARGV[8]
if ARGV[1] == 'client' then
  local node = nil
  if ARGV[11] == '' then
    local cur = redis.call('HGET', KEYS[3], ARGV[9])
    node = cur and string.match(cur, '^([^|]*)|')
  elseif ARGV[11] ~= '-' then
    node = ARGV[11]
  end
  if not node and redis.call('EXISTS', KEYS[4]) == 0 then return {0, '', 0} end
  channel = node and (ARGV[10] .. node) or ''
end
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if not epoch then
  epoch = ARGV[6]
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'epoch', epoch)
end
local offset = redis.call('HINCRBY', KEYS[2], 'offset', 1)
local env = ARGV[2] .. cmsgpack.pack(offset) .. cmsgpack.pack(epoch)
redis.call('XADD', KEYS[1], 'MAXLEN', tonumber(ARGV[3]), offset .. '-0', 'e', env)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[4]))
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[5]))
local receivers = 0
if channel ~= '' then receivers = redis.call(ARGV[7], channel, env) end
return {offset, epoch, receivers}
"""

# KEYS: stream, meta hash. ARGV: after offset, epoch ('' with offset 0: from the start).
# Returns {1, envelopes...} when the stream covers everything after `after`, else {0}.
HISTORY: Final = """
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if not epoch then return {1} end
if ARGV[2] ~= '' and epoch ~= ARGV[2] then return {0} end
local last = tonumber(redis.call('HGET', KEYS[2], 'offset') or '0')
local after = tonumber(ARGV[1])
if after > last then return {0} end
if after == last then return {1} end
local entries = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1] .. '-0', '+')
if #entries == 0 or entries[1][1] ~= string.format('%d-0', after + 1) then return {0} end
local out = {1}
for _, entry in ipairs(entries) do table.insert(out, entry[2][2]) end
return out
"""

# KEYS: presence hash, own node set. ARGV: node id, client ids...
# Forgets clients this node no longer holds (an unregister that failed during an outage).
PRUNE: Final = """
local removed = 0
for i = 2, #ARGV do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  if cur and string.match(cur, '^([^|]*)|') == ARGV[1] then
    redis.call('HDEL', KEYS[1], ARGV[i])
    removed = removed + 1
  end
  redis.call('SREM', KEYS[2], ARGV[i])
end
return removed
"""
