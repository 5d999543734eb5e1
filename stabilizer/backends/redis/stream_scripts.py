"""Lua scripts of sessions, groups and history (the namespace's slot). Client ids, group
and stream names arrive as arguments and are only used as hash fields, set members, or
after a fixed key prefix (see keys.py); they are never patterns.
"""

from typing import Final

from stabilizer.backends.redis.scripts import LEAVE_ALL, PRESENCE_LIB

# A guard for the scripts a closing (or opening) socket runs: true when the client's
# presence entry (in `presence`, when the caller could pass it: same slot) names another
# connection than `conn` ('' = no guard), a newer socket of the client that owns the
# session now.
OWNED_ELSEWHERE: Final = """
local function owned_elsewhere(presence, client, conn)
  if not presence or conn == '' then return false end
  local cur = redis.call('HGET', presence, client)
  if not cur then return false end
  return string.match(cur, '^[^|]*|([^|]*)|') ~= conn
end
"""

# KEYS: session hash, away zset, meta of "all", meta of "c:<client>", client's group set
#       [, meta of "u:<user>" (when ARGV[8] is not '')][, the presence hash].
# ARGV: client id, '1' for a fresh session, group-set prefix, events channel, event
#       prefix, node id, publish command, user id ('' = none), the holder's conn id ('' =
#       none), the presence hash's index in KEYS ('' = not passed: presence in other slots),
#       then (a fresh one) the baselines of "all", "c:<client>" and "u:<user>" read when
#       the holder registered ("offset|epoch"; '' or none = read them now).
# Nothing, and false, when the presence hash names another connection than the holder (a
# newer socket took the client: OWNED_ELSEWHERE).
# The session lives while connected, held by one connection (field '_': MEMBERSHIP names
# it in every change written from then on). A fresh one first ends whatever the client had
# (its groups and session data), then records where the client's streams stood when its
# holder registered, or stand now (its replay baselines), and returns them: {stream,
# "offset|epoch", ...} (nothing for a revived
# one). A revived one that no longer exists (a sweep ended it, or its time ran out, after
# the resume loaded it): 0, and nothing changed.
OPEN_SESSION: Final = LEAVE_ALL + OWNED_ELSEWHERE + """
local presence = nil
if ARGV[10] ~= '' then presence = KEYS[tonumber(ARGV[10])] end
if owned_elsewhere(presence, ARGV[1], ARGV[9]) then return false end
if ARGV[2] == '1' then
  leave_all(KEYS[5], ARGV[3], ARGV[1], ARGV[4], ARGV[5], ARGV[6], ARGV[7])
  redis.call('DEL', KEYS[1])
elseif redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], '_', ARGV[9])
redis.call('PERSIST', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
local baselines = {}
if ARGV[2] == '1' then
  local streams = {[3] = 'all', [4] = 'c:' .. ARGV[1]}
  local given = {[3] = ARGV[11], [4] = ARGV[12], [6] = ARGV[13]}
  if ARGV[8] ~= '' then streams[6] = 'u:' .. ARGV[8] end
  for i, stream in pairs(streams) do
    local position = given[i]
    if not position or position == '' then
      local epoch = redis.call('HGET', KEYS[i], 'epoch')
      position = (redis.call('HGET', KEYS[i], 'offset') or '0') .. '|' .. (epoch or '')
    end
    redis.call('HSET', KEYS[1], 'p:' .. stream, position)
    table.insert(baselines, stream)
    table.insert(baselines, position)
  end
end
return baselines
"""

# KEYS: client's group set, session hash, away zset[, presence hash].
# ARGV: client id, group-set prefix, events channel ('' = none), event prefix, node id,
#       publish command, the closing connection ('' = none: end it regardless), the lease
#       deadline a sweep holds the client on the away list until ('' = not a sweep's).
# Ends the session: leaves every group; nothing when a newer connection of the client owns
# it (OWNED_ELSEWHERE), or (a sweep's) when the client is no longer held for that lease: a
# connection of it began since the sweep read its presence (a session's open, or a start
# without history, takes the client off the list: COUNT_GROUPS). Returns the groups left
# (false: the sweep's lease was gone).
END_SESSION: Final = LEAVE_ALL + OWNED_ELSEWHERE + """
if owned_elsewhere(KEYS[4], ARGV[1], ARGV[7] or '') then return {} end
if (ARGV[8] or '') ~= '' and tonumber(redis.call('ZSCORE', KEYS[3], ARGV[1]) or -1) ~=
    tonumber(ARGV[8]) then
  return false
end
local groups = leave_all(KEYS[1], ARGV[2], ARGV[1], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
return groups
"""

# KEYS: away zset. ARGV: ttl_ms, session-key prefix ('' = the sessions' expiry is set by
# the caller: spread layout), client ids...
# The clients left (or their node died): their sessions end after ttl unless they return.
SUSPEND: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i = 3, #ARGV do
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[i])
  if ARGV[2] ~= '' then redis.call('PEXPIRE', ARGV[2] .. ARGV[i], ttl + 1000) end
end
return #ARGV - 2
"""

# KEYS: away zset, session hash (spread: the away zset again), presence hash (or none).
# ARGV: ttl_ms, client id, the closing connection, '1' when the caller sets the session's
# expiry (spread: it lives in another slot).
# The client left: its session ends after ttl unless it returns; nothing when a newer
# connection of the client owns the session (OWNED_ELSEWHERE). Returns 1 if done.
SUSPEND_SESSION: Final = OWNED_ELSEWHERE + """
if owned_elsewhere(KEYS[3], ARGV[2], ARGV[3]) then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
redis.call('ZADD', KEYS[1], now + ttl, ARGV[2])
if ARGV[4] ~= '1' then redis.call('PEXPIRE', KEYS[2], ttl + 1000) end
return 1
"""

# KEYS: session hash, client's group set (one slot: the client's). ARGV: client id.
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

# KEYS: stream meta hashes (the namespace's slot). Returns the position "offset|epoch" of
# each stream, in order ("0|" for one with no message).
STREAM_POSITIONS: Final = """
local out = {}
for k = 1, #KEYS do
  local epoch = redis.call('HGET', KEYS[k], 'epoch')
  out[k] = (redis.call('HGET', KEYS[k], 'offset') or '0') .. '|' .. (epoch or '')
end
return out
"""

# KEYS: session hash. Returns the conn id of the connection holding the session (field
# '_'), or false when there is none (no session, or one no connection opened).
SESSION_HOLDER: Final = """
return redis.call('HGET', KEYS[1], '_')
"""

# KEYS: session hash (its own slot: any layout). ARGV: field ("u:<key>"), value.
# Sets one user-data field of a session that exists; 0, and nothing written, otherwise
# (its open failed, or it ended): a hash of user data alone would be a session that
# recorded no baselines, which no open makes. Returns 1 when written.
SAVE_USER_DATA: Final = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

# KEYS: away zset, presence hash. ARGV: limit, client-group-set prefix, group-set prefix,
#       session prefix, events channel ('' = none), event prefix, node id, publish command.
# Ends the sessions whose deadline passed (unless the client is back), leaving their groups
# (with "leave" events, as END_SESSION); the presence changes go out as one envelope per
# group (PRESENCE_LIB's batch), so the members of a dead node leave in one diff.
# Returns the client ids whose sessions ended.
SWEEP: Final = LEAVE_ALL + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local ended, batch = {}, presence_batch()
for _, cid in ipairs(due) do
  redis.call('ZREM', KEYS[1], cid)
  if not redis.call('HGET', KEYS[2], cid) then
    leave_all(ARGV[2] .. cid, ARGV[3], cid, ARGV[5], ARGV[6], ARGV[7], ARGV[8], batch)
    redis.call('DEL', ARGV[4] .. cid)
    table.insert(ended, cid)
  end
end
presence_flush(ARGV[3], batch, ARGV[7], ARGV[8])
return ended
"""

# KEYS: group set, client's group set, client's session hash, group stream meta, away zset
#       [, presence hash (when ARGV[8] is 'p')].
# ARGV: client id, group, events channel ('' = none), event prefix, node id, publish
#       command, 'join', 'leave' or 'update', where the holder is read ('s' the session's
#       '_' field, 'p' the client's presence entry, '' nowhere), grace ms, group-set prefix,
#       presence entry ('' = none). A join with an entry sets the member's presence entry
#       (PRESENCE_LIB); a leave removes it; an update sets it only for a member (``changed``
#       then says whether it is one), and changes nothing else. A join records the group
#       stream's baseline position in the client's session (when it has one). A join for a
#       client the store does not know (no session, or no presence: the store lost it, and
#       its node has not registered it again yet) also puts the client on the away list,
#       due after the grace unless it already is: if its node dies before it registers the
#       client again, the sweep ends the membership instead of keeping it for good.
# Returns {1 if it changed anything else 0, the holder's conn id ('' = none; false when
# read nowhere)}.
MEMBERSHIP: Final = PRESENCE_LIB + """
local changed
if ARGV[7] == 'update' then
  changed = redis.call('SISMEMBER', KEYS[1], ARGV[1])
  if changed == 1 then
    presence_set(ARGV[10], ARGV[2], ARGV[1], ARGV[11], ARGV[5], ARGV[6])
  end
  return {changed, false}
elseif ARGV[7] == 'join' then
  changed = redis.call('SADD', KEYS[1], ARGV[1])
  redis.call('SADD', KEYS[2], ARGV[2])
  if changed == 1 and redis.call('EXISTS', KEYS[3]) == 1 then
    local epoch = redis.call('HGET', KEYS[4], 'epoch')
    local offset = redis.call('HGET', KEYS[4], 'offset') or '0'
    redis.call('HSET', KEYS[3], 'p:g:' .. ARGV[2], offset .. '|' .. (epoch or ''))
  end
  if ARGV[11] ~= '' then
    presence_set(ARGV[10], ARGV[2], ARGV[1], ARGV[11], ARGV[5], ARGV[6])
  end
else
  changed = redis.call('SREM', KEYS[1], ARGV[1])
  redis.call('SREM', KEYS[2], ARGV[2])
  redis.call('HDEL', KEYS[3], 'p:g:' .. ARGV[2])
  presence_set(ARGV[10], ARGV[2], ARGV[1], false, ARGV[5], ARGV[6])
end
if changed == 1 and ARGV[3] ~= '' then
  local ev = cjson.encode({event = ARGV[7], client_id = ARGV[1], group = ARGV[2],
                           node_id = ARGV[5]})
  redis.call(ARGV[6], ARGV[3], ARGV[4] .. cmsgpack.pack(ev) .. '\\192\\192')
end
local holder, known = false, true
if ARGV[8] == 's' then
  holder = redis.call('HGET', KEYS[3], '_') or ''
  known = redis.call('EXISTS', KEYS[3]) == 1
elseif ARGV[8] == 'p' then
  local cur = redis.call('HGET', KEYS[6], ARGV[1])
  holder = cur and string.match(cur, '^[^|]*|([^|]*)|') or ''
  known = cur ~= false
end
if ARGV[7] == 'join' and not known then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZADD', KEYS[5], 'NX', now + tonumber(ARGV[9]), ARGV[1])
end
return {changed, holder}
"""

# KEYS: stream, meta hash, presence hash (a user target: the user's hash), session hash.
# ARGV: target kind, envelope prefix, max entries, stream ttl ms, meta ttl ms, new epoch,
#       publish command, channel (all/group), client id, node-channel prefix, owner node
#       ('' = look it up in the presence hash; '-' = known absent), '1' when the caller
#       found the client's session, '?' when it could not look (spread layout: the session
#       is in another slot).
# A user target's message goes to every node holding a connection of the user, and
# `receivers` counts those connections, whose client ids follow it in the reply.
# Returns {offset, epoch, receivers, client ids...}; {0, '', 0} when a client target is
# gone for good;
# {-1, '', 0} (having done nothing) when it is not connected and its session was not looked
# up ('?').
SEQUENCE: Final = """
local channel = ARGV[8]
local per_node = nil
if ARGV[1] == 'client' then
  local node = nil
  if ARGV[11] == '' then
    local cur = redis.call('HGET', KEYS[3], ARGV[9])
    node = cur and string.match(cur, '^([^|]*)|')
  elseif ARGV[11] ~= '-' then
    node = ARGV[11]
  end
  if not node and ARGV[12] == '?' then return {-1, '', 0} end
  if not node and ARGV[12] ~= '1' and redis.call('EXISTS', KEYS[4]) == 0 then
    return {0, '', 0}
  end
  channel = node and (ARGV[10] .. node) or ''
elseif ARGV[1] == 'user' then
  per_node = {}
  local entries = redis.call('HGETALL', KEYS[3])
  for i = 1, #entries, 2 do
    local node = string.match(entries[i + 1], '^([^|]*)|')
    if node then
      per_node[node] = per_node[node] or {}
      table.insert(per_node[node], entries[i])
    end
  end
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
local reply = {offset, epoch, 0}
if per_node then
  for node, ids in pairs(per_node) do
    if redis.call(ARGV[7], ARGV[10] .. node, env) > 0 then
      for _, id in ipairs(ids) do table.insert(reply, id) end
    end
  end
  receivers = #reply - 3
elseif channel ~= '' then
  receivers = redis.call(ARGV[7], channel, env)
end
reply[3] = receivers
return reply
"""

# KEYS: stream, meta hash. ARGV: after offset, epoch ('' with offset 0: from the start), at
# most how many entries, at most how many bytes of them past the first (0: no bound).
# Returns {1, last offset, envelopes...} when the stream covers everything after `after`
# (the envelopes from after + 1 on, as many as the bounds let through), {2} when it has no
# meta at all (expired or lost: a truthy status, so that it still reads as covered),
# {0, epoch} when the stream is in another epoch than the one asked for, else {0}. The
# entries are fetched a few at a time, so that the script holds no more of a long stream
# than its bounds let out (one XRANGE of it all blocked Redis for seconds).
HISTORY: Final = """
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if not epoch then return {2} end
if ARGV[2] ~= '' and epoch ~= ARGV[2] then return {0, epoch} end
local last = tonumber(redis.call('HGET', KEYS[2], 'offset') or '0')
local after = tonumber(ARGV[1])
if after > last then return {0} end
local out = {1, last}
if after == last then return out end
local most, budget = tonumber(ARGV[3]), tonumber(ARGV[4])
local from, size, count = '(' .. ARGV[1] .. '-0', 0, 32
repeat
  if most > 0 then count = math.min(count, most - (#out - 2)) end
  local entries = redis.call('XRANGE', KEYS[1], from, '+', 'COUNT', count)
  if #out == 2 and (#entries == 0 or entries[1][1] ~= string.format('%d-0', after + 1)) then
    return {0}
  end
  for _, entry in ipairs(entries) do
    local env = entry[2][2]
    if budget > 0 and #out > 2 and size + #env > budget then return out end
    size = size + #env
    table.insert(out, env)
    from = '(' .. entry[1]
  end
until #entries < count or (most > 0 and #out - 2 >= most)
return out
"""

# KEYS: a group's presence hash, its presence version key.
# Returns {version ('0' when the group has no presence), field/value pairs...}: the state
# every change up to that version made, read at once.
PRESENCE_STATE: Final = """
local version = redis.call('GET', KEYS[2]) or '0'
local out = redis.call('HGETALL', KEYS[1])
table.insert(out, 1, version)
return out
"""
