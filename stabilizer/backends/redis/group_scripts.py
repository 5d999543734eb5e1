"""Lua scripts of group membership beyond single joins and leaves (the namespace's slot).
Client ids and group names arrive as arguments and are only used as set members or after a
fixed key prefix (see keys.py); they are never patterns.
"""

from typing import Final

# KEYS: the group set of each client of the batch, in order.
# ARGV: 1 group-set prefix, 2 '1' to restore, then per client: client id, n, n groups
#       (n is 0 without restore).
# With restore, each client becomes a member of its n groups again (the store lost them);
# no events, no baselines. Returns, per client in order, the groups it belongs to.
RECONCILE_GROUPS: Final = """
local prefix, restore = ARGV[1], ARGV[2] == '1'
local listed = {}
local i = 3
for k = 1, #KEYS do
  local cid, n = ARGV[i], tonumber(ARGV[i + 1])
  if restore then
    for j = i + 2, i + 1 + n do
      redis.call('SADD', prefix .. ARGV[j], cid)
      redis.call('SADD', KEYS[k], ARGV[j])
    end
  end
  listed[k] = redis.call('SMEMBERS', KEYS[k])
  i = i + 2 + n
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
