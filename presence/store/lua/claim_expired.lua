--[[
claim_expired.lua -- claim one batch of expired connections for an expiry sweep.

KEYS[1]  {P}:conns            ZSET  cid -> expiry ms (the expiry index)
KEYS[2]  {P}:sweeping         ZSET  cid -> claim deadline ms (claimed by a sweep)
KEYS[3]  {P}:sweeping:exp     HASH  cid -> expiry ms at claim time
KEYS[4]  {P}:users            ZSET  uid -> latest expiry ms of the user's connections

ARGV[1] now (ms)   ARGV[2] batch size   ARGV[3] claim timeout (ms)   ARGV[4] key grace (ms)

Returns {deadline, nreclaimed, cid_1, expiry_1, cid_2, expiry_2, ...}: the claim deadline
every returned connection now carries (the caller acks with it), how many of them were
re-claimed from a sweep that crashed or stalled, then at most ARGV[2] connections.

A claim MOVES the connection from the expiry index to the claim set, in this one script:
two sweeps can never claim the same connection, and the next ZRANGEBYSCORE never sees it
again, so the cost of a run is O(expired), whatever the number of live connections.
A heartbeat after the claim puts the connection back into the index and removes the claim
(heartbeat.lua); end.lua in mode 'swept' then leaves it online.
A claim whose deadline passed belongs to a sweep that died before acking: it is handed out
again (with a new deadline), so a crash mid-run loses nothing.

Housekeeping: users whose newest connection expired more than the key grace ago are
dropped from {P}:users. Their connection hashes have expired with the grace, so no sweep
could emit their leave any more, and without this the index would grow forever.
]]
local now = tonumber(ARGV[1])
local batch = tonumber(ARGV[2])
local deadline = now + tonumber(ARGV[3])
local out = {deadline, 0}

-- 1. Claims left behind by a dead sweep (deadline <= now).
local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, batch)
for _, cid in ipairs(stale) do
  redis.call('ZADD', KEYS[2], deadline, cid)
  out[#out + 1] = cid
  out[#out + 1] = redis.call('HGET', KEYS[3], cid) or tostring(now)
end
out[2] = #stale

-- 2. New expired connections ('expiring exactly now' is already gone, as in connect.lua).
local room = batch - #stale
if room > 0 then
  local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, room)
  for i = 1, #due, 2 do
    local cid, exp = due[i], due[i + 1]
    redis.call('ZREM', KEYS[1], cid)
    redis.call('ZADD', KEYS[2], deadline, cid)
    redis.call('HSET', KEYS[3], cid, exp)
    out[#out + 1] = cid
    out[#out + 1] = exp
  end
end

redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', '(' .. (now - tonumber(ARGV[4])))
return out
