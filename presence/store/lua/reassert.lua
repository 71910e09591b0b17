--[[
reassert.lua -- write back a live connection the store lost, without join/leave noise.

Redis replication is asynchronous: a failover loses the writes the old primary had not
passed on yet, and a Redis restarted without its data loses everything. The web process
still holds the socket, so it knows what the store should say: this script writes that back
idempotently. It runs when a heartbeat found its connection unknown but not ended
(heartbeat.lua returned 2): the connection, its expiry, the user's index entry and status,
and its rooms.

KEYS[1]  {P}:conns            ZSET  cid -> expiry ms
KEYS[2]  {P}:users            ZSET  uid -> latest expiry ms
KEYS[3]  {P}:stats            HASH  live counters (reasserted)
KEYS[4]  {P}:events           STREAM the event log (lib/eventlog.lua)
KEYS[5]  {P}:conn:<cid>       HASH  uid, username, channel, exp, at, ip, login
KEYS[6]  {P}:conn:<cid>:rooms SET   rooms of the connection
KEYS[7]  {P}:user:<uid>       HASH  username, status
KEYS[8]  {P}:user:<uid>:conns ZSET  cid -> expiry ms
(the user half, on the user's shard: the rooms are noted on the connection here, and
presence/store/connections.py then runs room_join_room.lua in its re-assert mode on each
room's shard, which writes the membership back and logs its join with x = '1')

ARGV[1] now (ms)   ARGV[2] ttl (ms)   ARGV[3] key grace (ms)   ARGV[4] event log max length
ARGV[5] cid   ARGV[6] uid   ARGV[7] username   ARGV[8] channel   ARGV[9] status
ARGV[10] ip   ARGV[11] login hash   ARGV[12] nrooms, then the room names

Returns {state, logged, status}: state 1 the connection was written back, 2 it was there already
(its rooms and indexes were topped up), 0 it was ended here (end.lua's tombstone: the
socket must close with 4408; nothing is written). `logged` counts the entries logged; status is the user's (the room halves log it).

Logged: a `join` with x = '1' for the global scope when the user was not listed online
(the room halves log one per room the user was not listed in). x = '1' tells the hooks this is no new arrival
(presence/hooks/events.py: no user.online / room.join), while log readers, v2 diffs and the
replica list the user again; no `open` (the session row exists already) and never a leave.
]]
--!include eventlog
local now, ttl, grace = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local cid, uid, username = ARGV[5], ARGV[6], ARGV[7]
local nrooms = tonumber(ARGV[12])
expect_types({KEYS[1], 'zset', KEYS[2], 'zset', KEYS[3], 'hash', KEYS[5], 'hash',
  KEYS[6], 'set', KEYS[7], 'hash', KEYS[8], 'zset'})
if redis.call('HEXISTS', KEYS[5], 'ended') == 1 then
  return {0, 0}
end
log_open(KEYS[4], ARGV[4], now)
local exp = now + ttl
local keyexp = exp + grace
local state = 2
if redis.call('HEXISTS', KEYS[5], 'uid') == 0 then
  state = 1
  redis.call('HSET', KEYS[5], 'uid', uid, 'username', username, 'channel', ARGV[8],
    'exp', exp, 'at', now, 'ip', ARGV[10], 'login', ARGV[11])
  redis.call('HINCRBY', KEYS[3], 'reasserted', 1)
else
  redis.call('HSET', KEYS[5], 'exp', exp)
end
redis.call('PEXPIREAT', KEYS[5], keyexp)
local listed = tonumber(redis.call('ZSCORE', KEYS[2], uid) or '0') > now
redis.call('ZADD', KEYS[1], exp, cid)
redis.call('ZADD', KEYS[2], 'GT', exp, uid)
redis.call('ZADD', KEYS[8], exp, cid)
redis.call('PEXPIREAT', KEYS[8], keyexp)
redis.call('HSET', KEYS[7], 'username', username)
if redis.call('HEXISTS', KEYS[7], 'status') == 0 then
  redis.call('HSET', KEYS[7], 'status', ARGV[9])
end
redis.call('PEXPIREAT', KEYS[7], keyexp)
local status = redis.call('HGET', KEYS[7], 'status')
local logged = 0
if not listed then
  log_event('join', 'r', '', 'u', uid, 'n', username, 's', status, 'x', '1')
  logged = logged + 1
end
for r = 0, nrooms - 1 do
  redis.call('SADD', KEYS[6], ARGV[13 + r])
end
redis.call('PEXPIREAT', KEYS[6], keyexp)
return {state, logged, status}
