--[[
room_join_room.lua -- the room half of a room join (the room's shard): add the connection to
the room and log the user's join on the room shard's stream, once.

KEYS[1]  {S}:room:<room>             ZSET  uid -> latest expiry ms of their connections in it
KEYS[2]  {S}:room:<room>:user:<uid>  SET   the user's connections in the room
KEYS[3]  {S}:rooms                   ZSET  room -> a lower bound of its members' expiry ms
                                            (repair_rooms.lua's index; lowered here, LT)
KEYS[4]  {S}:events                  STREAM the room shard's event log (lib/eventlog.lua)

ARGV[1] now (ms)   ARGV[2] key grace (ms)   ARGV[3] cid   ARGV[4] uid   ARGV[5] room
ARGV[6] event log max length   ARGV[7] the connection's expiry ms (room_join_user.lua)
ARGV[8] username   ARGV[9] status
ARGV[10] '1': re-assert (presence/store/connections.py: reassert, after reassert.lua wrote
         the connection back on the user's shard), else absent

Idempotent by connection id: SADD of the cid into the room-user set is what decides. When
the cid was there already (a retry of a join whose first attempt got this far) nothing is
written or logged and 0 is returned. Otherwise returns 1 when the user was not in the room
before (a `join` with r = room, u, n, s is logged), 0 when another of the user's connections
was already in it.

Re-assert mode writes the membership back even when the cid was there (its score is topped
up, ZADD GT) and logs a join only when the user was not listed in the room (no score above
now), always with x = '1': no hook-visible arrival, as reassert.lua's own global join.

The join carries o = '1' when the room had no member at all before it (its zset was empty:
the room became occupied; the server-side hooks' room.occupied). Members whose connection
lapsed but was not swept yet still count, as they do for the room's own join/leave events.
The join carries x = '1' instead when the user's own lapsed entry was still in the room (no
leave was logged for it, and none will be): the hooks send no second room.join for it.
]]
--!include eventlog
local now = tonumber(ARGV[1])
expect_types({KEYS[1], 'zset', KEYS[2], 'set', KEYS[3], 'zset'})
log_open(KEYS[4], ARGV[6], now)
local exp = tonumber(ARGV[7])
local keyexp = exp + tonumber(ARGV[2])
-- Read before the SADD: a lapsed entry (a connection not yet swept) is not "in the room".
local before = redis.call('ZSCORE', KEYS[1], ARGV[4])
local was_empty = redis.call('ZCARD', KEYS[1]) == 0
if ARGV[10] == '1' then
  redis.call('SADD', KEYS[2], ARGV[3])
  redis.call('PEXPIREAT', KEYS[2], keyexp)
  redis.call('ZADD', KEYS[1], 'GT', exp, ARGV[4])
  redis.call('PEXPIREAT', KEYS[1], keyexp)
  redis.call('ZADD', KEYS[3], 'LT', exp, ARGV[5])
  if (not before) or tonumber(before) <= now then
    log_event('join', 'r', ARGV[5], 'u', ARGV[4], 'n', ARGV[8], 's', ARGV[9], 'x', '1')
    return 1
  end
  return 0
end
if redis.call('SADD', KEYS[2], ARGV[3]) == 0 then
  return 0
end
redis.call('PEXPIREAT', KEYS[2], keyexp)
redis.call('ZADD', KEYS[1], 'GT', exp, ARGV[4])
redis.call('PEXPIREAT', KEYS[1], keyexp)
redis.call('ZADD', KEYS[3], 'LT', exp, ARGV[5])
local name, status = ARGV[8], ARGV[9]
if before and tonumber(before) <= now then
  log_event('join', 'r', ARGV[5], 'u', ARGV[4], 'n', name, 's', status, 'x', '1')
  return 1
elseif not before then
  if was_empty then
    log_event('join', 'r', ARGV[5], 'u', ARGV[4], 'n', name, 's', status, 'o', '1')
  else
    log_event('join', 'r', ARGV[5], 'u', ARGV[4], 'n', name, 's', status)
  end
  return 1
end
return 0
