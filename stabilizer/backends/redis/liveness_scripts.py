"""Lua scripts of node liveness, for liveness.py: deadlines in the nodes zset on the Redis
clock, reaping the presence a dead node left, pruning what this node no longer holds, and
re-registering its presence after an outage. Each touches keys of one hash slot only: the
nodes zset (the namespace's), or one presence bucket's hash and node set.

Presence entries are read as scripts.py describes them (``<node_id>|<conn_id>|<since_us>``,
then ``|<user>`` with users). Client ids arrive as arguments and are only used as hash
fields or set members; they are never patterns.
"""

from typing import Final

from stabilizer.backends.redis.user_scripts import SEAT_LIMIT_LIB, SEATS_LIB

# KEYS: nodes zset, reaped zset. ARGV: node_id, ttl_ms.
# Refreshes this node's deadline and claims the nodes whose deadline passed: each goes in
# the reaped zset (until when the claim holds: this node's ttl) before anything of it is
# removed, so that it learns of the reap at its next keepalive, whenever that lands. A
# node claimed by another reaper whose claim still holds is left to it. A node finds its
# own claim until the reap ends (REAP_DONE), or drops it once it lapsed (its reaper died).
# Returns {1 if this node was (re)added or is being reaped, claimed node ids...}.
KEEPALIVE: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
local rejoined = redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
local held = redis.call('ZSCORE', KEYS[2], ARGV[1])
if held then
  rejoined = 1
  if tonumber(held) <= now then redis.call('ZREM', KEYS[2], ARGV[1]) end
end
local claimed = {rejoined}
for _, node in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 16)) do
  local claim = redis.call('ZSCORE', KEYS[2], node)
  if node ~= ARGV[1] and not (claim and tonumber(claim) > now) then
    redis.call('ZADD', KEYS[2], now + ttl, node)
    table.insert(claimed, node)
  end
end
return claimed
"""

# KEYS: nodes zset, reaped zset, node reports hash. ARGV: node id.
# Ends a reap (or a clean shutdown): the node's liveness entry, claim and report go
# together, so a reaped node that refreshed meanwhile finds itself gone at its next
# keepalive (its presence may have been removed after it re-registered).
REAP_DONE: Final = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return 1
"""

# Drops what a removed presence entry held among its user's seats: at once when the user
# hashes share the slot, else by adding (user, client, conn) to `later` for SEATS.
_DROP_SEAT: Final = SEATS_LIB + """
local function drop_seat(entry, cid, uprefix, users, seats, later)
  local user = entry_user(entry)
  if not user then return end
  local conn = string.match(entry, '^[^|]*|([^|]*)|')
  if seats then
    seat_drop(uprefix, users, user, cid, conn)
  else
    table.insert(later, user)
    table.insert(later, cid)
    table.insert(later, conn)
  end
end
"""

# KEYS: presence hash, node set of the dead node. ARGV: dead node id, batch size, user-hash
# prefix, users set, '1' when the user hashes share this slot.
# Pops up to a batch of the dead node's clients; removes those still naming that node.
# Returns {removed, remaining members, {user, client, conn} seats left to drop}.
REAP_BATCH: Final = _DROP_SEAT + """
local members = redis.call('SPOP', KEYS[2], tonumber(ARGV[2]))
local removed, later = 0, {}
for _, cid in ipairs(members) do
  local cur = redis.call('HGET', KEYS[1], cid)
  if cur and string.match(cur, '^([^|]*)|') == ARGV[1] then
    redis.call('HDEL', KEYS[1], cid)
    drop_seat(cur, cid, ARGV[3], ARGV[4], ARGV[5] == '1', later)
    removed = removed + 1
  end
end
return {removed, redis.call('SCARD', KEYS[2]), later}
"""

# KEYS: nodes zset. Returns live node ids.
LIVE_NODES: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
"""

# KEYS: presence hash, dead node's set. ARGV: as REAP_BATCH.
# Like REAP_BATCH but returns {remaining, {removed client ids}, {seats left to drop}} so
# sessions can be suspended.
REAP_CLIENTS: Final = _DROP_SEAT + """
local members = redis.call('SPOP', KEYS[2], tonumber(ARGV[2]))
local removed, later = {}, {}
for _, cid in ipairs(members) do
  local cur = redis.call('HGET', KEYS[1], cid)
  if cur and string.match(cur, '^([^|]*)|') == ARGV[1] then
    redis.call('HDEL', KEYS[1], cid)
    drop_seat(cur, cid, ARGV[3], ARGV[4], ARGV[5] == '1', later)
    table.insert(removed, cid)
  end
end
return {redis.call('SCARD', KEYS[2]), removed, later}
"""

# KEYS: presence hash, own node set. ARGV: node id, listed-at cutoff (since_us; '' = none),
# user-hash prefix, users set, '1' when the user hashes share this slot, client ids...
# Forgets clients this node no longer holds (an unregister that failed during an outage, or
# what an earlier process under this node id left), except entries of connections made at
# or after the cutoff (admitted while the caller listed its connections).
# Returns {{removed client ids}, {seats left to drop}}: their sessions end after a while.
PRUNE: Final = _DROP_SEAT + """
local removed, later = {}, {}
local cutoff = tonumber(ARGV[2])
for i = 6, #ARGV do
  local cid = ARGV[i]
  local cur = redis.call('HGET', KEYS[1], cid)
  local node, since
  if cur then node, since = string.match(cur, '^([^|]*)|[^|]*|(%d+)') end
  local mine = cur and node == ARGV[1]
  if not (mine and cutoff and since and tonumber(since) >= cutoff) then
    if mine then
      redis.call('HDEL', KEYS[1], cid)
      drop_seat(cur, cid, ARGV[3], ARGV[4], ARGV[5] == '1', later)
      table.insert(removed, cid)
    end
    redis.call('SREM', KEYS[2], cid)
  end
end
return {removed, later}
"""

# KEYS: presence hash, own node set.
# ARGV: 1 node_id, 2 node-set prefix, 3 node-channel prefix, 4 publish command, 5 user-hash
#       prefix, 6 users set, 7 '1' when the user hashes share this slot, 8 the users'
#       connection limit (0 = none; only with 7), 9 CLIENT_CLOSE prefix (wire.py), 10 the
#       packed close body of a connection past the limit, then (client_id, entry, kick
#       envelope prefix, '1' if it may claim, user seat or '', '1' if it is seated without
#       the limit) sextuples, oldest first.
# Re-registers entries that are absent or still ours (and their users' seats). Where
# another node holds a client, that entry stays, unless ours may claim (it was admitted
# while this node was cut off, so it never overwrote anything) and connected later: then
# it takes the client over and the other node gets a KICK for its older socket. An entry
# of this node naming a newer connection (admitted while the caller listed its connections)
# stays as it is. A connection that needs a seat of a user holding the limit gets one only
# by taking a newer connection's (seat_room); else it is not registered (and an entry of
# this node for an earlier connection of its client, which it replaced here, goes). One
# seated without the limit (the store admitted it, then lost writes: a seat the older
# data restored may name a connection that is gone) gets its seat back unchecked.
# Where the user hashes live elsewhere (7 is '0'), our entry keeps the stamp of one of the
# same connection that REGISTER raised (SEATS orders seats by it), and the seats of another
# user's entries replaced here are left to drop.
# Returns {client ids another node keeps (our local sockets of them are stale and must
# close), {client id, conn id, ...} of our connections past their user's limit,
# {user, client, conn} seats left to drop}.
RESYNC: Final = _DROP_SEAT + SEAT_LIMIT_LIB + """
local lost, later = {}, {}
local seats, ulimit = ARGV[7] == '1', tonumber(ARGV[8])
local lim = {node = ARGV[1], over = {}, publish = ARGV[4], channels = ARGV[3],
             head = ARGV[9], body = ARGV[10]}
for i = 11, #ARGV, 6 do
  local cid, entry = ARGV[i], ARGV[i + 1]
  local cur = redis.call('HGET', KEYS[1], cid)
  local node, conn, since
  if cur then node, conn, since = string.match(cur, '^([^|]*)|([^|]*)|(%d+)') end
  local mconn, mine = string.match(entry, '^[^|]*|([^|]*)|(%d+)')
  mine = tonumber(mine)
  local newer_here = node == ARGV[1] and conn ~= mconn and since and mine
    and tonumber(since) > mine
  local take = (not cur) or (node == ARGV[1] and not newer_here)
  local claim = not take and ARGV[i + 3] == '1' and node and since and mine
    and mine > tonumber(since)
  local user = entry_user(entry)
  if (take or claim) and seats and user and ARGV[i + 5] ~= '1'
      and not seat_room(ARGV[5], ARGV[6], user, cid, mine, ulimit, lim) then
    table.insert(lim.over, cid)
    table.insert(lim.over, mconn)
    if cur and node == ARGV[1] and conn ~= mconn then
      redis.call('HDEL', KEYS[1], cid)
      redis.call('SREM', KEYS[2], cid)
      local old = entry_user(cur)
      if old then seat_drop(ARGV[5], ARGV[6], old, cid, conn or '') end
    end
  elseif take or claim then
    if claim then
      redis.call('SREM', ARGV[2] .. node, cid)
      redis.call(ARGV[4], ARGV[3] .. node, ARGV[i + 2] .. cmsgpack.pack(conn))
    end
    if not seats and conn == mconn then entry = stamped(entry, tonumber(since)) end
    redis.call('HSET', KEYS[1], cid, entry)
    redis.call('SADD', KEYS[2], cid)
    if cur and entry_user(cur) ~= user then
      drop_seat(cur, cid, ARGV[5], ARGV[6], seats, later)
    end
    if seats and user then seat_set(ARGV[5], ARGV[6], user, cid, ARGV[i + 4]) end
  elseif not newer_here then
    table.insert(lost, cid)
  end
end
return {lost, lim.over, later}
"""
