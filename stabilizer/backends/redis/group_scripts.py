"""Lua scripts of group membership beyond single joins and leaves (the namespace's slot).
Client ids and group names arrive as arguments and are only used as set members or after a
fixed key prefix (see keys.py); they are never patterns.
"""

from typing import Final

from stabilizer.backends.redis.scripts import PRESENCE_LIB

# KEYS: the away zset, the presence hash when ARGV[6] is '1' (presence shares the slot),
#       then the group set of each client of the batch, in order.
# ARGV: 1 group-set prefix, 2 '1' to restore, 3 grace ms, 4 node id, 5 publish command,
#       6 '1' when KEYS[2] is the presence hash, then per client: client id, since_us of
#       this node's connection of it ('' unknown), n, n (group, presence entry or '')
#       pairs (n is 0 without restore).
# With restore, each client becomes a member of its n groups again (the store lost them);
# no events, no baselines. Not a client that presence places on another node through a
# connection as new as ours or newer: that one holds it now (it began a session of its
# own, or resumed this one), with the groups its set lists; RESYNC, which follows, keeps
# it there and this node closes its older socket. A membership given an entry gets it back
# when its group's presence hash has none for the client (PRESENCE_LIB: the change is
# published, a join for the followers); one the store still has stays. A restored client is
# also put on the away list, due after the grace unless it already is: its node registers
# its presence right after this, and if the node dies first, the sweep ends what this
# wrote. Returns, per client in order, the groups it belongs to.
RECONCILE_GROUPS: Final = PRESENCE_LIB + """
local prefix, restore = ARGV[1], ARGV[2] == '1'
local base = string.sub(prefix, 1, -3)
local first = ARGV[6] == '1' and 3 or 2
local due = 0
if restore then
  local t = redis.call('TIME')
  due = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[3])
end
local function held_elsewhere(cid, mine)
  if first == 2 or mine == '' then return false end
  local cur = redis.call('HGET', KEYS[2], cid)
  if not cur then return false end
  local node, since = string.match(cur, '^([^|]*)|[^|]*|(%d+)')
  return node ~= nil and node ~= ARGV[4] and since ~= nil
    and tonumber(since) >= tonumber(mine)
end
local listed = {}
local i = 7
for k = first, #KEYS do
  local cid, n = ARGV[i], tonumber(ARGV[i + 2])
  if restore and n > 0 and not held_elsewhere(cid, ARGV[i + 1]) then
    for j = i + 3, i + 1 + 2 * n, 2 do
      local g, entry = ARGV[j], ARGV[j + 1]
      redis.call('SADD', prefix .. g, cid)
      redis.call('SADD', KEYS[k], g)
      if entry ~= '' and redis.call('HEXISTS', base .. 'gp:' .. g, cid) == 0 then
        presence_set(prefix, g, cid, entry, ARGV[4], ARGV[5])
      end
    end
    redis.call('ZADD', KEYS[1], 'NX', due, cid)
  end
  listed[k - first + 1] = redis.call('SMEMBERS', KEYS[k])
  i = i + 3 + 2 * n
end
return listed
"""

# KEYS: presence hash, client's group set (one slot: presence is not spread over buckets).
# ARGV: client id, group, '1' when the client must be a member (a join) else '0',
#       node-channel prefix, envelope, publish command.
# ROUTE for a MEMBERSHIP envelope, only while the change it carries still stands: a join
# or leave undone since it was written (a fresh session ended it, another node left or
# joined again) is not carried out. Returns the number of subscribers that received it (0
# when no node owns the client or the change no longer stands).
ROUTE_CHANGE: Final = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return 0 end
local node = string.match(cur, '^([^|]*)|')
if not node then return 0 end
local member = redis.call('SISMEMBER', KEYS[2], ARGV[2]) == 1
if member ~= (ARGV[3] == '1') then return 0 end
return redis.call(ARGV[6], ARGV[4] .. node, ARGV[5])
"""

# KEYS: the presence hash of each group asked about (the namespace's slot). ARGV: client id.
# Returns the client's entry in each, in order ('' where it has none).
PRESENCE_ENTRIES: Final = """
local found = {}
for k = 1, #KEYS do found[k] = redis.call('HGET', KEYS[k], ARGV[1]) or '' end
return found
"""
