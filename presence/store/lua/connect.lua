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
The gate's user side (checked before anything is registered; the address side, rate and
connections per address, is connect_gate.lua's, on the address's shard, run before the
'register' call of this script and given back when that refuses: presence/store/connections.py):
KEYS[9]  {P}:user:<uid>:block STR   reason; set with an expiry by an operator's block
KEYS[10] {P}:user:<uid>:revoked STR ms: credentials issued before it are refused (a kick)
KEYS[11] {P}:login:<hash>:revoked STR set while a login session is revoked (logout, kick)
KEYS[12] {P}:token:<id>       STR   a single-use token's mark, once presented
KEYS[13] {P}:active           ZSET  uid -> last activity (Unix s): a connect is activity
KEYS[14] {P}:held             ZSET  held leaves -> due ms (end.lua's grace window)
KEYS[15] {P}:held:why         HASH  held leave -> reason

ARGV[1] now (ms)   ARGV[2] ttl (ms)   ARGV[3] key grace (ms)
ARGV[4] cid        ARGV[5] uid        ARGV[6] username   ARGV[7] channel name
ARGV[8] event log max length   ARGV[9] client IP ('' = unknown)   ARGV[10] user agent
ARGV[11] max live connections per user (0 = no limit)
ARGV[12] when the credentials were issued (ms; 0 = not known, e.g. a session cookie)
ARGV[13] token id ('' = not a token)   ARGV[14] token mark lifetime (ms)
ARGV[15] login session hash ('' = none)
ARGV[16] mode: 'register' (check, then register) or 'check' (the checks only, after the
         address gate refused, to tell which reason comes first: returns {'ok'} when none
         refuses; a presented token is marked used all the same)

Logs `open` (c, u, n, ch, ip, ua: what the connection-session row is written from) and, for
the user's first live connection, a global `join` (r '', u, n, s). That join carries x = '1'
when the user was still listed in {P}:users: their connections lapsed but no sweep ended
them yet, so no leave was logged, and none will be (the sweep then finds this live
connection). The server-side hooks send no second user.online for such a join.

The grace window: when the user's leave is held (their last connection closed less than
PRESENCE_LEAVE_GRACE ago; end.lua), this connect takes the hold back: nobody saw the user
leave, so no join is logged either, and the status is kept (joined is 0). The holds of
their rooms stay: a room rejoined in time logs nothing (room_join_room.lua), one that is not
is left when its hold expires (release_held.lua).

Returns {joined, status, open_id}: joined is 1 when the user had no live connection before
this one, status is the user's current status, open_id the id of the `open` entry.
Or, when the gate refuses, {'refused', why, retry_after_ms} with nothing registered or
logged; why is one of blocked, token_revoked, session_revoked, token_used,
too_many_connections (connect_gate.lua adds connect_rate and too_many_from_address). A
presented token is marked used even when the connection is then refused: a token opens at
most one connection attempt.

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
-- The gate's string keys are not type-checked: they are only tested (EXISTS, GET) or set
-- with NX, which writes nothing over a key of another type.
expect_types({KEYS[1], 'zset', KEYS[2], 'zset', KEYS[3], 'hash', KEYS[4], 'hash',
  KEYS[5], 'set', KEYS[6], 'hash', KEYS[7], 'zset', KEYS[13], 'zset',
  KEYS[14], 'zset', KEYS[15], 'hash'})
local live_before = redis.call('ZCOUNT', KEYS[7], '(' .. now, '+inf')
log_open(KEYS[8], ARGV[8], now)

-- ---- the gate: who may not connect (nothing is registered or logged for them)
local function refuse(why, retry_ms)
  return {'refused', why, math.max(0, math.floor(retry_ms))}
end
if redis.call('EXISTS', KEYS[9]) == 1 then
  return refuse('blocked', redis.call('PTTL', KEYS[9]))
end
if ARGV[15] ~= '' and redis.call('EXISTS', KEYS[11]) == 1 then
  return refuse('session_revoked', 0)
end
-- Issue times have a resolution of a second (a token's timestamp): a token minted in the
-- second of a kick counts as minted before it.
local issued = tonumber(ARGV[12])
local revoked = tonumber(redis.call('GET', KEYS[10]) or '0')
if issued > 0 and issued <= revoked then
  return refuse('token_revoked', 0)
end
if ARGV[13] ~= '' and not redis.call('SET', KEYS[12], now, 'NX', 'PX', ARGV[14]) then
  return refuse('token_used', 0)
end
local max_user = tonumber(ARGV[11])
if max_user > 0 and live_before >= max_user then
  return refuse('too_many_connections', 0)
end
if ARGV[16] == 'check' then
  return {'ok'}
end

redis.call('HSET', KEYS[4], 'uid', uid, 'username', username, 'channel', ARGV[7], 'exp', exp,
  'at', now, 'ip', ARGV[9], 'login', ARGV[15])
redis.call('PEXPIREAT', KEYS[4], keyexp)
-- A held leave taken back: the user never left (for anyone watching), so no join.
local held_back = live_before == 0 and redis.call('ZREM', KEYS[14], uid) == 1
if held_back then
  redis.call('HDEL', KEYS[15], uid)
  redis.call('HDEL', KEYS[6], 'held')
end
-- Read before the ZADD below: still listed while no live connection = lapsed, not swept.
local relisted = live_before == 0 and redis.call('ZSCORE', KEYS[2], uid) ~= false
redis.call('ZADD', KEYS[1], exp, cid)
redis.call('ZADD', KEYS[2], 'GT', exp, uid)
redis.call('ZADD', KEYS[7], exp, cid)
redis.call('PEXPIREAT', KEYS[7], keyexp)
-- GT: an activity written with a later time (another process's batch) is never moved back.
redis.call('ZADD', KEYS[13], 'GT', math.floor(now / 1000), uid)

redis.call('HSET', KEYS[6], 'username', username)
if live_before == 0 and not held_back then
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
if held_back then
  return {0, status, open_id}
elseif relisted then
  log_event('join', 'r', '', 'u', uid, 'n', username, 's', status, 'x', '1')
  return {1, status, open_id}
elseif live_before == 0 then
  log_event('join', 'r', '', 'u', uid, 'n', username, 's', status)
  return {1, status, open_id}
end
return {0, status, open_id}
