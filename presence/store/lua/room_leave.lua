--[[
room_leave.lua -- take a connection out of a room, and log the user's leave.

KEYS[1]  {P}:conn:<cid>:rooms       SET   rooms of the connection
KEYS[2]  {P}:room:<room>            ZSET  uid -> latest expiry ms
KEYS[3]  {P}:room:<room>:user:<uid> SET   the user's connections in the room
KEYS[4]  {P}:user:<uid>             HASH  username, status
KEYS[5]  {P}:events                 STREAM the event log (lib/eventlog.lua)

ARGV[1] cid   ARGV[2] uid   ARGV[3] room   ARGV[4] now (ms)   ARGV[5] event log max length

Returns 1 when the user has no connection left in the room (a `leave` with r = room, u, n,
the user's current status s and why 'left' is logged), 0 otherwise (another tab of the
user is still in it, or this connection was not). The leave carries v = '1' when the room
has no member left at all (its zset is empty: the room was vacated; the hooks' room.vacated).
]]
--!include eventlog
expect_types({KEYS[1], 'set', KEYS[2], 'zset', KEYS[3], 'set', KEYS[4], 'hash'})
if redis.call('SISMEMBER', KEYS[1], ARGV[3]) == 0 then
  return 0
end
local info = redis.call('HMGET', KEYS[4], 'username', 'status')
local others = redis.call('SCARD', KEYS[3]) - redis.call('SISMEMBER', KEYS[3], ARGV[1])
log_open(KEYS[5], ARGV[5], tonumber(ARGV[4]))
redis.call('SREM', KEYS[1], ARGV[3])
redis.call('SREM', KEYS[3], ARGV[1])
if others == 0 and redis.call('ZREM', KEYS[2], ARGV[2]) == 1 then
  if redis.call('ZCARD', KEYS[2]) == 0 then
    log_event('leave', 'r', ARGV[3], 'u', ARGV[2], 'n', info[1] or '', 's',
      info[2] or 'online', 'why', 'left', 'v', '1')
  else
    log_event('leave', 'r', ARGV[3], 'u', ARGV[2], 'n', info[1] or '', 's',
      info[2] or 'online', 'why', 'left')
  end
  return 1
end
return 0
