--[[
end.lua -- the user half of ending a batch of connections (graceful close or expiry
sweep), on the users' shard: the connection, the user's presence, and what that changed.
The room half (end_rooms.lua, on each room's shard) runs after it for the connections this
script ended (state 1), with the rooms the caller knows (presence/store/connections.py).

KEYS[1]  {P}:conns            ZSET  cid -> expiry ms
KEYS[2]  {P}:users            ZSET  uid -> latest expiry ms
KEYS[3]  {P}:stats            HASH  live counters
KEYS[4]  {P}:sweeping         ZSET  cid -> claim deadline ms
KEYS[5]  {P}:sweeping:exp     HASH  cid -> expiry ms at claim time
KEYS[6]  {P}:events           STREAM the event log (lib/eventlog.lua)
KEYS[7]  {P}:held             ZSET  held leaves -> due ms (`<uid>`, `<uid>|<room>`)
KEYS[8]  {P}:held:why         HASH  held leave -> the reason its leave will carry
then, for each connection, 4 keys: {P}:conn:<cid>  {P}:conn:<cid>:rooms  {P}:user:<uid>
{P}:user:<uid>:conns (as in heartbeat.lua).

ARGV[1] now (ms)
ARGV[2] mode: 'closed' (the socket closed: always end), 'swept' (end only while the
        connection is still claimed by a sweep and has not heartbeated since) or 'undo'
        (a connect that did not finish: end it if it was registered, else log nothing)
ARGV[3] end reason logged with `close` (closed, kicked, server_shutdown, error; the sweep
        passes timeout)
ARGV[4] ttl (ms)   ARGV[5] event log max length
ARGV[6] leave grace (ms; 0 = leave at once). The caller passes 0 for final reasons
        (kicked, logged_out, revoked) and for the sweep (a lapsed connection already had
        its TTL); only mode 'closed' holds.
ARGV[7] nconns, then per connection: cid, uid

Returns one entry per connection:
  {cid, state, global_left, username, room_1, ...}
  state 1: ended now; global_left is 1 when it was the user's last live connection (2: its
           leave is held, below); username is the connection's (the room half logs it),
           then the rooms of {S}:conn:<cid>:rooms (the room half runs for them and for the
           caller's).
  state 0: already ended by someone else, or its keys are gone. In mode 'closed' a `close`
           (hb '') is logged all the same: the socket did close, and the session row must
           end even when Redis lost the connection (the row keeps its first ending). In
           mode 'swept' nothing is logged (the sweep ends the row itself).
  state -1: not ended, the connection heartbeated after the sweep claimed it.

Logged for each connection ended now, in this order: a global `leave` (r '', at = end
time ms) when it was the user's last connection, then `close` (c, u, why, at = end time ms,
hb = last heartbeat ms). A swept connection ends at its expiry (last heartbeat + TTL), a
closed one now; the entries' `t` is when they were logged (the sweep's run for a swept one). The
rooms' leaves are end_rooms.lua's, on the rooms' shards' streams.

The grace window (ARGV[6] > 0). Where the global leave would be logged -- the user's last
live connection -- it is held instead: the user stays listed ({S}:users score becomes the
due time, now + grace; {S}:user:<uid> gets `held` = due), the leave is entered in {S}:held
with its reason in {S}:held:why, and the entry's global_left is 2 ("held": the caller
schedules release_held.lua). A connect of the user within the window cancels the hold and
logs no join (connect.lua). release_held.lua logs the leave when still due. Exactly one
leave either way: ZREM of the user from {S}:users is what logs it, here or there, and a
leave logged here drops the hold. Rooms hold their leaves the same way (end_rooms.lua).

An ended connection leaves a tombstone: its hash is replaced by one holding only `ended`
(the end time), kept for 10 x TTL. heartbeat.lua tells "ended" (0: close the socket) from
"lost by the store" (2: re-assert it) by it; every reader of the hash treats a hash without
`uid` as gone.

Exactly one caller sees state 1 for a connection: this script deletes the connection hash,
and that deletion is the ownership token between a closing socket and a sweep. So every
leave and close is logged exactly once, however many sweeps and sockets race.
]]
--!include eventlog
local now = tonumber(ARGV[1])
local mode, reason, ttl = ARGV[2], ARGV[3], tonumber(ARGV[4])
local grace = tonumber(ARGV[6])
local due = now + grace
local nconns = tonumber(ARGV[7])
-- Every key of the batch is checked before the first connection is touched.
local spec = {KEYS[1], 'zset', KEYS[2], 'zset', KEYS[3], 'hash', KEYS[4], 'zset',
  KEYS[5], 'hash', KEYS[7], 'zset', KEYS[8], 'hash'}
do
  local a, k = 8, 9
  for _ = 1, nconns do
    -- conn, rooms, user, uconns
    for j, t in ipairs({'hash', 'set', 'hash', 'zset'}) do
      spec[#spec + 1] = KEYS[k + j - 1]
      spec[#spec + 1] = t
    end
    k = k + 4
  end
end
expect_types(spec)
log_open(KEYS[6], ARGV[5], now)
local function hold(member)
  redis.call('ZADD', KEYS[7], due, member)
  redis.call('HSET', KEYS[8], member, reason)
end
local a = 8
local k = 9
local out = {}
local ended = 0
for i = 1, nconns do
  local cid, uid = ARGV[a], ARGV[a + 1]
  local conn, rooms, user, uconns = KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
  local state = 1
  if mode == 'swept' then
    local claimed = redis.call('ZSCORE', KEYS[4], cid)
    local score = redis.call('ZSCORE', KEYS[1], cid)
    if (not claimed) and score and tonumber(score) > now then
      state = -1
    end
  end
  local info = nil
  if state == 1 then
    info = redis.call('HMGET', conn, 'username', 'exp')
    if not info[2] then  -- no hash: ended by someone else (or its keys expired)
      state = 0
    end
  end
  local entry = {cid, state, 0, ''}
  if state == 1 then
    local username, exp = info[1] or '', tonumber(info[2] or now)
    entry[4] = username
    -- The connection's own room set is authoritative (a join whose room half timed out may
    -- be missing from the caller's list): the room half runs for these too.
    for _, room in ipairs(redis.call('SMEMBERS', rooms)) do
      entry[#entry + 1] = room
    end
    local at = now
    if mode == 'swept' then
      at = tonumber(redis.call('HGET', KEYS[5], cid) or exp)
    end
    redis.call('DEL', conn, rooms)
    redis.call('HSET', conn, 'ended', at)
    redis.call('PEXPIRE', conn, 10 * ttl)
    redis.call('ZREM', KEYS[1], cid)
    redis.call('ZREM', uconns, cid)
    if mode ~= 'swept' and redis.call('ZREM', KEYS[4], cid) == 1 then
      redis.call('HDEL', KEYS[5], cid)
    end
    if redis.call('ZCOUNT', uconns, '(' .. now, '+inf') == 0 then
      if grace > 0 and redis.call('ZSCORE', KEYS[2], uid) then
        redis.call('ZADD', KEYS[2], due, uid)
        redis.call('HSET', user, 'held', due)
        hold(uid)
        entry[3] = 2
      elseif redis.call('ZREM', KEYS[2], uid) == 1 then
        entry[3] = 1
        redis.call('ZREM', KEYS[7], uid)
        redis.call('HDEL', KEYS[8], uid)
        redis.call('HDEL', user, 'held')
        -- 'at': when it happened, the lapse for a swept one (t is when it was logged).
        log_event('leave', 'r', '', 'u', uid, 'n', username, 's', 'offline', 'why', reason,
          'at', at)
      end
    else
      -- The user stays online: lower their index score to their newest remaining connection.
      local newest = redis.call('ZRANGE', uconns, -1, -1, 'WITHSCORES')
      redis.call('ZADD', KEYS[2], newest[2], uid)
    end
    log_event('close', 'c', cid, 'u', uid, 'why', reason, 'at', at, 'hb', exp - ttl)
    ended = ended + 1
  elseif state == 0 and mode == 'closed' then
    -- The socket closed but its hash is gone: a sweep ended it first (and logged its close),
    -- or Redis lost it. Log the socket's own close so its session row ends now either way;
    -- the row keeps the first ending. No leave: membership is already gone.
    log_event('close', 'c', cid, 'u', uid, 'why', reason, 'at', now, 'hb', '')
  end
  out[i] = entry
  a = a + 2
  k = k + 4
end
if ended > 0 then
  redis.call('HINCRBY', KEYS[3], 'disconnects', ended)
end
return out
