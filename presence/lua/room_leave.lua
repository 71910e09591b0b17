--[[
room_leave.lua -- take a connection out of a room.

KEYS[1]  {P}:conn:<cid>:rooms       SET   rooms of the connection
KEYS[2]  {P}:room:<room>            ZSET  uid -> latest expiry ms
KEYS[3]  {P}:room:<room>:user:<uid> SET   the user's connections in the room

ARGV[1] cid   ARGV[2] uid   ARGV[3] room

Returns 1 when the user has no connection left in the room (the caller emits a leave
event), 0 otherwise (another tab of the user is still in it, or this connection was not).
]]
if redis.call('SREM', KEYS[1], ARGV[3]) == 0 then
  return 0
end
redis.call('SREM', KEYS[3], ARGV[1])
if redis.call('SCARD', KEYS[3]) == 0 then
  return redis.call('ZREM', KEYS[2], ARGV[2])
end
return 0
