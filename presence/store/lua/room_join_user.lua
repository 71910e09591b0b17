--[[
room_join_user.lua -- the user half of a room join (the user's shard): note the room on the
connection, the authoritative side (rooms.py runs room_join_room.lua on the room's shard next).

KEYS[1]  {S}:conn:<cid>        HASH  uid, username, channel, exp
KEYS[2]  {S}:conn:<cid>:rooms  SET   rooms of the connection
KEYS[3]  {S}:user:<uid>        HASH  username, status

ARGV[1] key grace (ms)   ARGV[2] room

Returns {exp, username, status, added}: added is 1 when the room was new to the connection,
0 when it was there already (a retry after a timeout: the caller runs the room half all the
same, which changes nothing when the first attempt got that far). Returns -1 when the
connection is unknown (its session ended): nothing is written and no room half runs.
]]
--!include eventlog
expect_types({KEYS[1], 'hash', KEYS[2], 'set', KEYS[3], 'hash'})
local info = redis.call('HMGET', KEYS[1], 'exp', 'username')
local exp = info[1]
if not exp then
  return -1
end
local status = redis.call('HGET', KEYS[3], 'status') or 'online'
local added = redis.call('SADD', KEYS[2], ARGV[2])
redis.call('PEXPIREAT', KEYS[2], tonumber(exp) + tonumber(ARGV[1]))
return {exp, info[2] or '', status, added}
