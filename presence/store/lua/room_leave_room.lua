--[[
room_leave_room.lua -- the room half of a room leave (the room's shard): take the connection
out of the room and log the user's leave on the room shard's stream, once.

KEYS[1]  {S}:room:<room>             ZSET  uid -> latest expiry ms
KEYS[2]  {S}:room:<room>:user:<uid>  SET   the user's connections in the room
KEYS[3]  {S}:events                  STREAM the room shard's event log (lib/eventlog.lua)

ARGV[1] cid   ARGV[2] uid   ARGV[3] room   ARGV[4] now (ms)   ARGV[5] event log max length
ARGV[6] username   ARGV[7] status (room_leave_user.lua)

Idempotent by connection id: SREM of the cid from the room-user set is what decides; a cid
that was not there (a retry, or a join whose room half never ran) changes and logs nothing.
Returns 1 when the user has no connection left in the room (a `leave` with r = room, u, n,
the user's current status s and why 'left' is logged), 0 otherwise. The leave carries
v = '1' when the room has no member left at all (the room was vacated; the hooks'
room.vacated).
]]
--!include eventlog
expect_types({KEYS[1], 'zset', KEYS[2], 'set'})
log_open(KEYS[3], ARGV[5], tonumber(ARGV[4]))
if redis.call('SREM', KEYS[2], ARGV[1]) == 0 then
  return 0
end
if redis.call('SCARD', KEYS[2]) == 0 and redis.call('ZREM', KEYS[1], ARGV[2]) == 1 then
  if redis.call('ZCARD', KEYS[1]) == 0 then
    log_event('leave', 'r', ARGV[3], 'u', ARGV[2], 'n', ARGV[6], 's', ARGV[7], 'why', 'left',
      'v', '1')
  else
    log_event('leave', 'r', ARGV[3], 'u', ARGV[2], 'n', ARGV[6], 's', ARGV[7], 'why', 'left')
  end
  return 1
end
return 0
