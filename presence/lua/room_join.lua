--[[
room_join.lua -- add a connection to a room.

KEYS[1]  {P}:conn:<cid>             HASH  uid, username, channel, exp
KEYS[2]  {P}:conn:<cid>:rooms       SET   rooms of the connection
KEYS[3]  {P}:room:<room>            ZSET  uid -> latest expiry ms of their connections in the room
KEYS[4]  {P}:room:<room>:user:<uid> SET   the user's connections in the room

ARGV[1] now (ms)   ARGV[2] key grace (ms)   ARGV[3] cid   ARGV[4] uid   ARGV[5] room

Returns 1 when the user was not in the room before (the caller emits a join event),
0 when this connection or another of the user's was already in it, -1 when the
connection is unknown (its session ended).
]]
local now = tonumber(ARGV[1])
local exp = redis.call('HGET', KEYS[1], 'exp')
if not exp then
  return -1
end
if redis.call('SADD', KEYS[2], ARGV[5]) == 0 then
  return 0
end
local keyexp = tonumber(exp) + tonumber(ARGV[2])
redis.call('SADD', KEYS[4], ARGV[3])
redis.call('PEXPIREAT', KEYS[2], keyexp)
redis.call('PEXPIREAT', KEYS[4], keyexp)
-- A lapsed entry (a connection not yet swept) does not count as being in the room.
local before = redis.call('ZSCORE', KEYS[3], ARGV[4])
redis.call('ZADD', KEYS[3], 'GT', exp, ARGV[4])
redis.call('PEXPIREAT', KEYS[3], keyexp)
if (not before) or tonumber(before) <= now then
  return 1
end
return 0
