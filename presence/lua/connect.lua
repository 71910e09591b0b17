--[[
connect.lua -- register a new WebSocket connection as present, and log it.

KEYS[1]  {P}:conns            ZSET  cid -> expiry ms (expiry index, swept by score)
KEYS[2]  {P}:users            ZSET  uid -> latest expiry ms of the user's connections
KEYS[3]  {P}:stats            HASH  live counters for the stats flush
KEYS[4]  {P}:conn:<cid>       HASH  uid, username, channel, exp, at (connected ms)
KEYS[5]  {P}:conn:<cid>:rooms SET   rooms this connection joined
KEYS[6]  {P}:user:<uid>       HASH  username, status
KEYS[7]  {P}:user:<uid>:conns ZSET  cid -> expiry ms
KEYS[8]  {P}:events           STREAM the event log (lib/eventlog.lua)

ARGV[1] now (ms)   ARGV[2] ttl (ms)   ARGV[3] key grace (ms)
ARGV[4] cid        ARGV[5] uid        ARGV[6] username   ARGV[7] channel name
ARGV[8] event log max length   ARGV[9] client IP ('' = unknown)   ARGV[10] user agent

Logs `open` (c, u, n, ch, ip, ua: what the connection-session row is written from) and, for
the user's first live connection, a global `join` (r '', u, n, s).

Returns {joined, status, open_id}: joined is 1 when the user had no live connection before
this one, status is the user's current status, open_id the id of the `open` entry.

Keys expire at expiry + grace, not at expiry: the sweep must still be able to read a
lapsed connection to end its session. "Online" is decided by the scores, never by key TTL.
]]
--!include eventlog
local now = tonumber(ARGV[1])
local exp = now + tonumber(ARGV[2])
local keyexp = exp + tonumber(ARGV[3])
local cid, uid, username = ARGV[4], ARGV[5], ARGV[6]

-- Reads (and the log check) before the first write: a failure leaves nothing behind.
-- '(' makes the bound exclusive: a connection expiring exactly now is already gone.
expect_types({KEYS[1], 'zset', KEYS[2], 'zset', KEYS[3], 'hash', KEYS[4], 'hash',
  KEYS[5], 'set', KEYS[6], 'hash', KEYS[7], 'zset'})
local live_before = redis.call('ZCOUNT', KEYS[7], '(' .. now, '+inf')
log_open(KEYS[8], ARGV[8], now)

redis.call('HSET', KEYS[4], 'uid', uid, 'username', username, 'channel', ARGV[7], 'exp', exp,
  'at', now)
redis.call('PEXPIREAT', KEYS[4], keyexp)
redis.call('ZADD', KEYS[1], exp, cid)
redis.call('ZADD', KEYS[2], 'GT', exp, uid)
redis.call('ZADD', KEYS[7], exp, cid)
redis.call('PEXPIREAT', KEYS[7], keyexp)

redis.call('HSET', KEYS[6], 'username', username)
if live_before == 0 then
  redis.call('HSET', KEYS[6], 'status', 'online')
end
redis.call('PEXPIREAT', KEYS[6], keyexp)
local status = redis.call('HGET', KEYS[6], 'status') or 'online'

redis.call('HINCRBY', KEYS[3], 'connects', 1)
local live_conns = redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
local live_users = redis.call('ZCOUNT', KEYS[2], '(' .. now, '+inf')
if live_conns > tonumber(redis.call('HGET', KEYS[3], 'peak_conns') or '0') then
  redis.call('HSET', KEYS[3], 'peak_conns', live_conns)
end
if live_users > tonumber(redis.call('HGET', KEYS[3], 'peak_users') or '0') then
  redis.call('HSET', KEYS[3], 'peak_users', live_users)
end

local open_id = log_event('open', 'c', cid, 'u', uid, 'n', username, 'ch', ARGV[7],
  'ip', ARGV[9], 'ua', ARGV[10])
if live_before == 0 then
  log_event('join', 'r', '', 'u', uid, 'n', username, 's', status)
  return {1, status, open_id}
end
return {0, status, open_id}
