"""Lua scripts of a client's presence: the group presence library, registering and
unregistering a connection, routing to its node, and the small steps batched with those
(tokens, the away list, a client's group count). Each touches keys of one hash slot only.
Node liveness (keepalive, reaping, pruning, resync) is in liveness_scripts.py; groups,
streams, users and the spread layout have modules of their own.

A presence entry is the string ``<node_id>|<conn_id>|<since_us>``: node ids and conn ids
never contain "|" (config validation and new_conn_id guarantee it). Client ids, group and
stream names arrive as arguments and are only used as hash fields, set members, or after a
fixed key prefix (see keys.py); they are never patterns.
"""

from typing import Final

from stabilizer.backends.redis.user_scripts import SEATS_LIB

# A Lua function that sets (`new` an entry) or removes (`new` false) a member's presence
# entry in group `g`: `keys_of` is the group-set prefix ``{ns}:g:``, which names the keys
# (keys.py: ``{ns}:gp:<group>``, ``{ns}:gv:<group>``, channel ``{ns}:gc:<group>``), or a
# function returning those three for a group (a spread layout's script passes its KEYS and
# channel). When the entry changed, it bumps the group's presence version and publishes a
# PRESENCE envelope
# ``[1, 11, node, g, "[old,new]", nil, "<version>"]`` on the group's channel. A version key
# starts at the Redis time in microseconds and goes when the group's presence empties, so
# versions keep growing across that (a million changes a second would be needed to catch up
# with the clock). Returns nothing; touches nothing when there is nothing to change.
# Given a `batch` (presence_batch()), it collects the change there instead of publishing it:
# presence_flush then publishes one envelope per group with all of that group's changes,
# ``[[version, old, new], ...]`` and the last one's version, so followers get them in one
# diff (a sweep ending many sessions at once).
PRESENCE_LIB: Final = """
local function presence_batch() return {groups = {}, items = {}, last = {}} end
local function group_keys(keys_of)
  if type(keys_of) ~= 'string' then return keys_of end
  local base = string.sub(keys_of, 1, -3)
  return function(g) return base .. 'gp:' .. g, base .. 'gv:' .. g, base .. 'gc:' .. g end
end
local function presence_envelope(channel, g, node, payload, version, publish)
  redis.call(publish, channel, '\\151\\001\\011' .. cmsgpack.pack(node)
    .. cmsgpack.pack(g) .. cmsgpack.pack(payload) .. '\\192' .. cmsgpack.pack(version))
end
local function presence_flush(keys_of, batch, node, publish)
  keys_of = group_keys(keys_of)
  for _, g in ipairs(batch.groups) do
    local payload = '[' .. table.concat(batch.items[g], ',') .. ']'
    local _, _, channel = keys_of(g)
    presence_envelope(channel, g, node, payload, batch.last[g], publish)
  end
end
local function presence_set(keys_of, g, cid, new, node, publish, batch)
  local pkey, vkey, channel = group_keys(keys_of)(g)
  local old = redis.call('HGET', pkey, cid)
  if (not old and not new) or old == new then return end
  if new then redis.call('HSET', pkey, cid, new) else redis.call('HDEL', pkey, cid) end
  local version
  if redis.call('EXISTS', vkey) == 1 then
    version = string.format('%d', redis.call('INCR', vkey))
  else
    local t = redis.call('TIME')
    version = t[1] .. string.sub('000000' .. t[2], -6)
    redis.call('SET', vkey, version)
  end
  if redis.call('EXISTS', pkey) == 0 then redis.call('DEL', vkey) end
  if batch then
    if not batch.items[g] then
      batch.items[g] = {}
      table.insert(batch.groups, g)
    end
    table.insert(batch.items[g], '[' .. version .. ',' .. (old or 'null') .. ','
      .. (new or 'null') .. ']')
    batch.last[g] = version
    return
  end
  local payload = '[' .. (old or 'null') .. ',' .. (new or 'null') .. ']'
  presence_envelope(channel, g, node, payload, version, publish)
end
"""

# A Lua function prepended to the scripts that end a client's group memberships: removes
# the client from each of its groups (publishing a "leave" event for each when the events
# channel is not '', and a presence change where it had an entry), deletes its group set,
# and returns the groups it left; with a `batch`, the presence changes are collected there.
LEAVE_ALL: Final = PRESENCE_LIB + """
local function leave_all(cg, group_prefix, cid, channel, event_prefix, node, publish, batch)
  local groups = redis.call('SMEMBERS', cg)
  for _, g in ipairs(groups) do
    redis.call('SREM', group_prefix .. g, cid)
    presence_set(group_prefix, g, cid, false, node, publish, batch)
    if channel ~= '' then
      local ev = cjson.encode({event = 'leave', client_id = cid, group = g, node_id = node})
      redis.call(publish, channel, event_prefix .. cmsgpack.pack(ev) .. '\\192\\192')
    end
  end
  redis.call('DEL', cg)
  return groups
end
"""

# KEYS: presence hash, own node set[, client's group set (when ARGV[9] is '1')], then the
#       stream meta hashes ARGV[19] counts.
# ARGV: 1 client_id, 2 entry, 3 node_id, 4 max_cluster (0 = none), 5 node-set prefix,
#       6 node-channel prefix, 7 kick envelope prefix (up to the old conn id, which the
#       script appends; its payload says whether the connection is fresh), 8 publish
#       command, 9 '1' to end whatever groups the client's set lists (history off, one
#       slot: a connection begins with none, whether a replaced connection left them or a
#       late write put them there), 10 group-set prefix, 11 events channel, 12 event
#       prefix, 13 user id ('' = none), 14 the user seat, 15 the user's connection limit
#       (0 = none), 16 user-hash prefix, 17 users set, 18 '1' when the user hashes share
#       this slot, 19 how many stream meta hashes end KEYS (a fresh session's streams, in
#       this slot).
# Where the user hashes live elsewhere (18 is '0'), an entry that replaces another is
# stored with a since_us later than the replaced one's (the nodes' clocks may disagree):
# the stamp SEATS orders the client's seats by.
# Returns {status, previous entry or false, the since_us stored, "offset|epoch" of each
# stream meta}; status -1 = cluster limit reached, -2 = the user's limit reached.
REGISTER: Final = LEAVE_ALL + SEATS_LIB + """
local cid, user, seats = ARGV[1], ARGV[13], ARGV[18] == '1'
local prev = redis.call('HGET', KEYS[1], cid)
local ulimit = tonumber(ARGV[15])
if user ~= '' and seats and ulimit > 0 then
  local ukey = ARGV[16] .. user
  if redis.call('HEXISTS', ukey, cid) == 0 and redis.call('HLEN', ukey) >= ulimit then
    return {-2, false, false}
  end
end
if not prev then
  local limit = tonumber(ARGV[4])
  if limit > 0 and redis.call('HLEN', KEYS[1]) >= limit then
    return {-1, false, false}
  end
end
local entry = ARGV[2]
if prev and not seats then
  local before = tonumber(string.match(prev, '^[^|]*|[^|]*|(%d+)'))
  entry = stamped(entry, before and before + 1)
end
redis.call('HSET', KEYS[1], cid, entry)
redis.call('SADD', KEYS[2], cid)
if user ~= '' and seats then seat_set(ARGV[16], ARGV[17], user, cid, ARGV[14]) end
if prev then
  local node, conn = string.match(prev, '^([^|]*)|([^|]*)|')
  local puser = entry_user(prev)
  if seats and puser and puser ~= user then
    seat_drop(ARGV[16], ARGV[17], puser, cid, conn or '')
  end
  if node and node ~= ARGV[3] then
    redis.call('SREM', ARGV[5] .. node, cid)
    redis.call(ARGV[8], ARGV[6] .. node, ARGV[7] .. cmsgpack.pack(conn))
  end
end
if ARGV[9] == '1' and redis.call('EXISTS', KEYS[3]) == 1 then
  leave_all(KEYS[3], ARGV[10], cid, ARGV[11], ARGV[12], ARGV[3], ARGV[8])
end
local out = {prev and 1 or 0, prev or false,
             string.match(entry, '^[^|]*|[^|]*|(%d+)') or false}
for k = #KEYS - tonumber(ARGV[19]) + 1, #KEYS do
  local epoch = redis.call('HGET', KEYS[k], 'epoch')
  table.insert(out, (redis.call('HGET', KEYS[k], 'offset') or '0') .. '|' .. (epoch or ''))
end
return out
"""

# KEYS: presence hash, own node set, away zset (the presence hash again when ARGV[6] is
# '0'), client's group set (when ARGV[7] is '1').
# ARGV: client_id, conn_id, user-hash prefix, users set, '1' when the user hashes share
# this slot, ms on the away list ('0': none; history, one slot), '1' to end the client's
# groups too (history off, one slot), group-set prefix, events channel, event prefix,
# node id, publish command.
# Returns the removed entry, or 0.
UNREGISTER: Final = LEAVE_ALL + SEATS_LIB + """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return 0 end
local node, conn = string.match(cur, '^([^|]*)|([^|]*)|')
if conn ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[2], ARGV[1])
local user = entry_user(cur)
if user and ARGV[5] == '1' then seat_drop(ARGV[3], ARGV[4], user, ARGV[1], conn) end
local away = tonumber(ARGV[6])
if away > 0 then
  local t = redis.call('TIME')
  redis.call('ZADD', KEYS[3], tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + away,
             ARGV[1])
end
if ARGV[7] == '1' then
  leave_all(KEYS[4], ARGV[8], ARGV[1], ARGV[9], ARGV[10], ARGV[11], ARGV[12])
end
return cur
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

# KEYS: the token's marker. ARGV: its expiry in ms. SET NX as a script, so that the token
# checks of a reconnect storm share pipelined round trips like the other connect scripts.
# Returns 1 for the first caller, 0 after.
SPEND_TOKEN: Final = """
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then return 1 end
return 0
"""

# KEYS: the signing key, the keyring. ARGV: now (ms), the key to keep when there is none,
# then pairs of a key and the time (ms) it verifies until. Returns {signing key, {key, until
# (ms), ...}}; the keyring expires with its last key (backends/redis/tokens.py).
SHARE_KEYS: Final = """
redis.call('SET', KEYS[1], ARGV[2], 'NX')
local now = tonumber(ARGV[1])
for i = 3, #ARGV, 2 do
  local had = tonumber(redis.call('HGET', KEYS[2], ARGV[i]) or '0')
  if tonumber(ARGV[i + 1]) > had then redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
end
local ring = redis.call('HGETALL', KEYS[2])
local kept, last = {}, 0
for i = 1, #ring, 2 do
  local untl = tonumber(ring[i + 1])
  if untl <= now then
    redis.call('HDEL', KEYS[2], ring[i])
  else
    kept[#kept + 1] = ring[i]
    kept[#kept + 1] = ring[i + 1]
    if untl > last then last = untl end
  end
end
if last > 0 then redis.call('PEXPIRE', KEYS[2], math.floor(last - now) + 1) end
return {redis.call('GET', KEYS[1]), kept}
"""

# KEYS: the away list. ARGV: due (ms), client id. ZADD as a script, so that the closes of a
# storm share pipelined round trips (presence in other slots than the away list).
AWAY_AT: Final = """
return redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
"""

# KEYS: a client's group set[, the away zset]. ARGV: [the client id].
# SCARD as a script, so that the ends of a reconnect storm's connects and disconnects share
# pipelined round trips (presence in other slots). With the away zset (a new connection's
# start, without history): the client also leaves the away list, so that a sweep that read
# its presence before the connection registered stands down (END_SESSION's lease check)
# rather than end what the connection joins.
COUNT_GROUPS: Final = """
if KEYS[2] then redis.call('ZREM', KEYS[2], ARGV[1]) end
return redis.call('SCARD', KEYS[1])
"""
