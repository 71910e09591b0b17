--[[
room_leave_user.lua -- the user half of a room leave (the user's shard): take the room off
the connection, the authoritative side (rooms.py runs room_leave_room.lua on the room's
shard next).

KEYS[1]  {S}:conn:<cid>:rooms  SET   rooms of the connection
KEYS[2]  {S}:user:<uid>        HASH  username, status

ARGV[1] room

Returns {removed, username, status}: removed is 1 when the room was on the connection, 0
when it was not (a retry after a timeout: the caller runs the room half all the same, which
changes nothing when the first attempt got that far).
]]
--!include eventlog
expect_types({KEYS[1], 'set', KEYS[2], 'hash'})
local info = redis.call('HMGET', KEYS[2], 'username', 'status')
local removed = redis.call('SREM', KEYS[1], ARGV[1])
return {removed, info[1] or '', info[2] or 'online'}
