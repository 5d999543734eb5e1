"""Lua scripts of the spread key layout (keys.py): each touches the keys of one group, or
of one client, or of the namespace, never two of those. spread.py runs them in an order
that keeps the store recoverable when a node dies between two of them: a client's group
set (or its ``leaving`` set) lists every group the client may be a member of, so a sweep
can always finish what was begun. Client ids and group names arrive as arguments and are
used only as set members or hash fields.
"""

from typing import Final

from stabilizer.backends.redis.scripts import PRESENCE_LIB
from stabilizer.backends.redis.stream_scripts import OWNED_ELSEWHERE

# KEYS: the group's member set, presence hash, presence version key, stream meta (one slot:
#       the group's).
# ARGV: 1 'join', 'update', 'leave' or 'restore', 2 group, 3 node id, 4 publish command,
#       5 the group's channel, 6 presence entry ('' = none), then the client ids ('restore':
#       client id and entry pairs).
# join (one client): SADD, HSET the entry when there is one (PRESENCE_LIB publishes the
#   change); returns {1 if it was new else 0, the stream's position "offset|epoch"}.
# update (one client): HSET the entry of a member; returns {1 if a member else 0, ''}.
# leave (any number): SREM each and drop its entry, the presence changes of several in one
#   envelope; returns the clients that were members.
# restore: SADD each and give back its entry where the hash has none for it; returns the
#   clients that were not members.
GROUP_CHANGE: Final = PRESENCE_LIB + """
local function keys_of(_) return KEYS[2], KEYS[3], ARGV[5] end
local action, g, node, publish = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if action == 'leave' then
  local batch = nil
  if #ARGV > 7 then batch = presence_batch() end
  local left = {}
  for i = 7, #ARGV do
    if redis.call('SREM', KEYS[1], ARGV[i]) == 1 then table.insert(left, ARGV[i]) end
    presence_set(keys_of, g, ARGV[i], false, node, publish, batch)
  end
  if batch then presence_flush(keys_of, batch, node, publish) end
  return left
elseif action == 'restore' then
  local added = {}
  for i = 7, #ARGV, 2 do
    if redis.call('SADD', KEYS[1], ARGV[i]) == 1 then table.insert(added, ARGV[i]) end
    if ARGV[i + 1] ~= '' and redis.call('HEXISTS', KEYS[2], ARGV[i]) == 0 then
      presence_set(keys_of, g, ARGV[i], ARGV[i + 1], node, publish)
    end
  end
  return added
end
local cid, entry = ARGV[7], ARGV[6]
if action == 'update' then
  local member = redis.call('SISMEMBER', KEYS[1], cid)
  if member == 1 then presence_set(keys_of, g, cid, entry, node, publish) end
  return {member, ''}
end
local changed = redis.call('SADD', KEYS[1], cid)
if entry ~= '' then presence_set(keys_of, g, cid, entry, node, publish) end
local epoch = redis.call('HGET', KEYS[4], 'epoch')
local offset = redis.call('HGET', KEYS[4], 'offset') or '0'
return {changed, offset .. '|' .. (epoch or '')}
"""

# KEYS: the client's group set, its session hash (one slot: the client's).
# ARGV: 'join', 'joined' or 'leave', group[, ('joined') position "offset|epoch" to record
#       as the group stream's baseline when the session exists and has none for it].
# A join lists the group first (before the group's set gets the client); 'joined', its last
# step after the group's, checks that the group is still listed (a leave or an end that ran
# between the join's steps unlisted it: the join is undone then) and only then records the
# baseline. A leave unlists the group after the group's set lost the client (which loses it
# once more after this). Returns {the session's holder ('' = none), 1 if the session
# exists[, ('joined') 1 if the group is still listed]}.
CLIENT_CHANGE: Final = """
local listed = nil
if ARGV[1] == 'join' then
  redis.call('SADD', KEYS[1], ARGV[2])
elseif ARGV[1] == 'joined' then
  listed = redis.call('SISMEMBER', KEYS[1], ARGV[2])
  if listed == 1 and (ARGV[3] or '') ~= '' and redis.call('EXISTS', KEYS[2]) == 1 then
    redis.call('HSETNX', KEYS[2], 'p:g:' .. ARGV[2], ARGV[3])
  end
else
  redis.call('SREM', KEYS[1], ARGV[2])
  redis.call('HDEL', KEYS[2], 'p:g:' .. ARGV[2])
end
local out = {redis.call('HGET', KEYS[2], '_') or '', redis.call('EXISTS', KEYS[2])}
if listed ~= nil then table.insert(out, listed) end
return out
"""

# KEYS: the client's group set, its leaving set, its session hash, its sweep fence (the
#       client's slot).
# ARGV: 1 'end', 'sweep' (nothing when the session is live: it exists with no expiry, as a
#       resume leaves it; unless ARGV[3] names its holder) or 'open' (a fresh session
#       replaces it), 2 '1' when the client is on the away list for a lease (the caller put
#       it there), 3 the new session's holder ('open'), or the holder a live session may
#       still have to be ended ('sweep': its client has no presence, see spread.py), then
#       ('open') its (stream, position) baseline pairs, or ('sweep') the sweep's fence
#       token ('' = none).
# A sweep without sessions sets its token in the fence before it reads the client's
# presence; every 'end' and 'open' (the first step of each connection's start and close)
# drops the fence, so that a sweep whose token is gone (-2) stands down: the client came
# back after the sweep read its presence, and what it joins since is its own.
# A client with no group to leave ends at once (with 'open', the new session begins in its
# place): returns {0}. Otherwise, without a lease, nothing changes and it returns {1}: the
# caller takes one and calls again. With one, the groups move to the leaving set (which
# keeps what an earlier, unfinished end left there), the group set and the session go, and
# it returns {2, groups to leave...}. {-1, its holder} for a live session ('sweep').
CLIENT_END: Final = """
if ARGV[1] == 'sweep' then
  if redis.call('PTTL', KEYS[3]) == -1 then
    local holder = redis.call('HGET', KEYS[3], '_') or ''
    if (ARGV[3] or '') == '' or holder ~= ARGV[3] then return {-1, holder} end
  end
  if (ARGV[4] or '') ~= '' and redis.call('GET', KEYS[4]) ~= ARGV[4] then return {-2} end
end
redis.call('DEL', KEYS[4])
if redis.call('SCARD', KEYS[1]) == 0 and redis.call('SCARD', KEYS[2]) == 0 then
  redis.call('DEL', KEYS[3])
  if ARGV[1] == 'open' then
    redis.call('HSET', KEYS[3], '_', ARGV[3])
    for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[3], 'p:' .. ARGV[i], ARGV[i + 1]) end
  end
  return {0}
end
if ARGV[2] ~= '1' then return {1} end
redis.call('SUNIONSTORE', KEYS[2], KEYS[1], KEYS[2])
redis.call('DEL', KEYS[1], KEYS[3])
local out = redis.call('SMEMBERS', KEYS[2])
table.insert(out, 1, 2)
return out
"""

# KEYS: the client's session hash, its leaving set (the client's slot).
# ARGV: the holder's conn id, '1' for a fresh session, then (stream, position) pairs.
# Marks the session live and held by the connection; a fresh one (whose earlier groups were
# left) drops the leaving set and records its streams' baselines. Returns 1; 0, and nothing
# changed, for a resumed session that no longer exists (a sweep ended it after the resume
# loaded it).
CLIENT_OPEN: Final = """
if ARGV[2] == '1' then
  redis.call('DEL', KEYS[1], KEYS[2])
elseif redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], '_', ARGV[1])
redis.call('PERSIST', KEYS[1])
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], 'p:' .. ARGV[i], ARGV[i + 1]) end
return 1
"""

# KEYS: the client's group set, its leaving set (the client's slot).
# Returns {the groups it lists, the groups an unfinished end still has to leave}.
CLIENT_LIST: Final = """
return {redis.call('SMEMBERS', KEYS[1]), redis.call('SMEMBERS', KEYS[2])}
"""

# KEYS: the away zset, then the stream meta hashes asked about[, then the presence hash]
#       (the namespace's slot).
# ARGV: the client id of a session opening, the opening conn id ('' = none), '1' when the
#       last key is the presence hash.
# False, and nothing changed, when the presence hash names another connection (a newer
# socket took the client: OWNED_ELSEWHERE). Else takes the client off the away list (its
# session must not be swept) and returns the position "offset|epoch" of each stream, in
# order.
POSITIONS: Final = OWNED_ELSEWHERE + """
local last = #KEYS
if ARGV[3] == '1' then
  if owned_elsewhere(KEYS[last], ARGV[1], ARGV[2]) then return false end
  last = last - 1
end
redis.call('ZREM', KEYS[1], ARGV[1])
local out = {}
for k = 2, last do
  local epoch = redis.call('HGET', KEYS[k], 'epoch')
  out[k - 1] = (redis.call('HGET', KEYS[k], 'offset') or '0') .. '|' .. (epoch or '')
end
return out
"""

# KEYS: the away zset[, the presence hash (when presence shares the namespace's slot)].
# ARGV: limit, lease ms.
# The clients whose session time ran out, each held for the lease (its deadline moves that
# far on, so that another sweep finishes it if this one dies); a client whose presence is
# back leaves the list. Returns {the lease deadline, client ids...}.
SWEEP_DUE: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = now + tonumber(ARGV[2])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local out = {lease}
for _, cid in ipairs(due) do
  if KEYS[2] and redis.call('HEXISTS', KEYS[2], cid) == 1 then
    redis.call('ZREM', KEYS[1], cid)
  else
    redis.call('ZADD', KEYS[1], lease, cid)
    table.insert(out, cid)
  end
end
return out
"""

# KEYS: the away zset. ARGV: a deadline, client ids.
# Takes off the list the clients still due at that deadline (one that was put back with
# another, by a later suspend, stays).
AWAY_DONE: Final = """
local n = 0
for i = 2, #ARGV do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) == tonumber(ARGV[1]) then
    n = n + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return n
"""
