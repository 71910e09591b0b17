--[[
room_join.lua -- add a connection to a room, and log the user's join.

KEYS[1]  {P}:conn:<cid>             HASH  uid, username, channel, exp
KEYS[2]  {P}:conn:<cid>:rooms       SET   rooms of the connection
KEYS[3]  {P}:room:<room>            ZSET  uid -> latest expiry ms of their connections in it
KEYS[4]  {P}:room:<room>:user:<uid> SET   the user's connections in the room
KEYS[5]  {P}:user:<uid>             HASH  username, status
KEYS[6]  {P}:events                 STREAM the event log (lib/eventlog.lua)

ARGV[1] now (ms)   ARGV[2] key grace (ms)   ARGV[3] cid   ARGV[4] uid   ARGV[5] room
ARGV[6] event log max length

Returns 1 when the user was not in the room before (a `join` with r = room, u, n and the
user's status s is logged), 0 when this connection or another of the user's was already
in it, -1 when the connection is unknown (its session ended).

The join carries o = '1' when the room had no member at all before it (its zset was empty:
the room became occupied; the server-side hooks' room.occupied). Members whose connection
lapsed but was not swept yet still count, as they do for the room's own join/leave events.
The join carries x = '1' instead when the user's own lapsed entry was still in the room (no
leave was logged for it, and none will be): the hooks send no second room.join for it.
]]
--!include eventlog
local now = tonumber(ARGV[1])
expect_types({KEYS[1], 'hash', KEYS[2], 'set', KEYS[3], 'zset', KEYS[4], 'set',
  KEYS[5], 'hash'})
local info = redis.call('HMGET', KEYS[1], 'exp', 'username')
local exp = info[1]
if not exp then
  return -1
end
if redis.call('SISMEMBER', KEYS[2], ARGV[5]) == 1 then
  return 0
end
-- A lapsed entry (a connection not yet swept) does not count as being in the room.
local before = redis.call('ZSCORE', KEYS[3], ARGV[4])
local status = redis.call('HGET', KEYS[5], 'status') or 'online'
local was_empty = redis.call('ZCARD', KEYS[3]) == 0
log_open(KEYS[6], ARGV[6], now)
local keyexp = tonumber(exp) + tonumber(ARGV[2])
redis.call('SADD', KEYS[2], ARGV[5])
redis.call('SADD', KEYS[4], ARGV[3])
redis.call('PEXPIREAT', KEYS[2], keyexp)
redis.call('PEXPIREAT', KEYS[4], keyexp)
redis.call('ZADD', KEYS[3], 'GT', exp, ARGV[4])
redis.call('PEXPIREAT', KEYS[3], keyexp)
if before and tonumber(before) <= now then
  log_event('join', 'r', ARGV[5], 'u', ARGV[4], 'n', info[2] or '', 's', status, 'x', '1')
  return 1
elseif not before then
  if was_empty then
    log_event('join', 'r', ARGV[5], 'u', ARGV[4], 'n', info[2] or '', 's', status, 'o', '1')
  else
    log_event('join', 'r', ARGV[5], 'u', ARGV[4], 'n', info[2] or '', 's', status)
  end
  return 1
end
return 0
