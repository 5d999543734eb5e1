"""Lua for users: each user's connections live in ``{ns}:u:<user>`` (client id ->
``node|conn|since_us|info_json``), the ids of users with a connection in ``{ns}:users``.

With one presence bucket the presence scripts keep the user hashes in the same step
(SEATS_LIB is prepended to them); with several, presence lives in other slots and SEATS
follows in the namespace's slot.
"""

from typing import Final

# entry_user: the user id of a presence entry ``node|conn|since_us|user`` (nil without).
# seat_drop: remove client `cid` from `user`'s hash if its seat names `conn` ('' = any), and
# the user from the users set once it has no connection left.
# seat_set: record client `cid` in `user`'s hash.
# stamped: `entry` (a presence entry or a seat, ``node|conn|since_us...``) with its
# since_us raised to `floor` (a number) where it is lower.
SEATS_LIB: Final = """
local function entry_user(entry)
  return string.match(entry, '^[^|]*|[^|]*|%d+|(.+)$')
end
local function stamped(entry, floor)
  local head, since, tail = string.match(entry, '^([^|]*|[^|]*|)(%d+)(.*)$')
  if not head or not floor or tonumber(since) >= floor then return entry end
  return head .. string.format('%.0f', floor) .. tail
end
local function seat_drop(uprefix, users, user, cid, conn)
  local ukey = uprefix .. user
  if conn ~= '' then
    local cur = redis.call('HGET', ukey, cid)
    if not cur or string.match(cur, '^[^|]*|([^|]*)|') ~= conn then return 0 end
  end
  redis.call('HDEL', ukey, cid)
  if redis.call('HLEN', ukey) == 0 then redis.call('SREM', users, user) end
  return 1
end
local function seat_set(uprefix, users, user, cid, value)
  redis.call('HSET', uprefix .. user, cid, value)
  redis.call('SADD', users, user)
end
"""

# seat_room: whether client `cid`'s connection, made at `since` (microseconds), may have a
# seat of `user` (limit `ulimit`, 0 = none) in a resync: it has one already, or the user has
# room, or it takes the seats of the user's newest connections that are newer than itself
# (the seats are dropped; their presence stays until their node closes them: another node
# gets `head .. cid .. body .. nil .. conn` on its channel, this node's own go in `over` as
# cid, conn). Oldest first by (since, client id), so that the seats end up with the user's
# oldest connections whichever node resyncs first.
SEAT_LIMIT_LIB: Final = """
local function newest_seat(ukey)
  local seats = redis.call('HGETALL', ukey)
  local best
  for j = 1, #seats, 2 do
    local node, conn, since = string.match(seats[j + 1], '^([^|]*)|([^|]*)|(%d+)')
    since = tonumber(since)
    if since and (not best or since > best.since
        or (since == best.since and seats[j] > best.cid)) then
      best = {cid = seats[j], node = node, conn = conn, since = since}
    end
  end
  return best
end
local function seat_room(uprefix, users, user, cid, since, ulimit, lim)
  local ukey = uprefix .. user
  if ulimit <= 0 or redis.call('HEXISTS', ukey, cid) == 1 then return true end
  while redis.call('HLEN', ukey) >= ulimit do
    local newest = newest_seat(ukey)
    if not newest or since > newest.since or (since == newest.since and cid > newest.cid) then
      return false
    end
    seat_drop(uprefix, users, user, newest.cid, newest.conn)
    if newest.node == lim.node then
      table.insert(lim.over, newest.cid)
      table.insert(lim.over, newest.conn)
    else
      redis.call(lim.publish, lim.channels .. newest.node, lim.head
        .. cmsgpack.pack(newest.cid) .. lim.body .. '\\192' .. cmsgpack.pack(newest.conn))
    end
  end
  return true
end
"""

# KEYS: users set. ARGV: user-hash prefix, then (op, user, client id, arg) quadruples: op
# 's' records the seat `arg` unless the client's seat names another connection with a
# later since_us, op 'd' drops the seat if it names conn `arg` ('' = any).
# The follow-up of the presence scripts when presence lives in other slots. Nothing orders
# two nodes' follow-ups for one client, so the seats' stamps do: a REGISTER that replaces
# an entry stores a later since_us than the entry's, and a seat gets the stamp of its
# entry, so a replaced connection's seat that lands last leaves the newer one in place.
SEATS: Final = SEATS_LIB + """
local function seat_newer(uprefix, users, user, cid, value)
  local cur = redis.call('HGET', uprefix .. user, cid)
  if cur then
    local conn, since = string.match(cur, '^[^|]*|([^|]*)|(%d+)')
    local mine, stamp = string.match(value, '^[^|]*|([^|]*)|(%d+)')
    if conn and stamp and conn ~= mine and tonumber(since) > tonumber(stamp) then return end
  end
  seat_set(uprefix, users, user, cid, value)
end
for i = 2, #ARGV, 4 do
  if ARGV[i] == 's' then
    seat_newer(ARGV[1], KEYS[1], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3])
  else
    seat_drop(ARGV[1], KEYS[1], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3])
  end
end
return 1
"""

# KEYS: the user's hash. ARGV: client id, conn id, info JSON. Replaces the info of the
# client's seat if the seat still names the conn (a newer socket's seat stays as it is).
SEAT_INFO: Final = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return 0 end
local head, conn = string.match(cur, '^([^|]*|([^|]*)|%d+|)')
if not head or conn ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], head .. ARGV[3])
return 1
"""

# KEYS: the user's hash. ARGV: node-channel prefix (namespace slot), envelope, publish
# command, this node's id. Publishes the envelope once to every other node holding a
# connection of the user; returns {the client ids of the connections the nodes that
# received it hold, the client ids of every connection seated on another node} (a socket of
# one of the second on this node has been replaced: the sender skips it).
USER_ROUTE: Final = """
local entries = redis.call('HGETALL', KEYS[1])
local per_node = {}
local elsewhere = {}
for i = 1, #entries, 2 do
  local node = string.match(entries[i + 1], '^([^|]*)|')
  if node and node ~= ARGV[4] then
    per_node[node] = per_node[node] or {}
    table.insert(per_node[node], entries[i])
    table.insert(elsewhere, entries[i])
  end
end
local reached = {}
for node, ids in pairs(per_node) do
  if redis.call(ARGV[3], ARGV[1] .. node, ARGV[2]) > 0 then
    for _, id in ipairs(ids) do table.insert(reached, id) end
  end
end
return {reached, elsewhere}
"""
