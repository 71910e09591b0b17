--[[
sweep_ack.lua -- release the claims of connections a sweep has finished with.

KEYS[1]  {P}:sweeping         ZSET  cid -> claim deadline ms
KEYS[2]  {P}:sweeping:exp     HASH  cid -> expiry ms at claim time

ARGV[1] the claim deadline claim_expired.lua returned to this sweep
ARGV[2..] cids

Returns how many claims were released.

Only claims still carrying this sweep's deadline are released: when a stalled sweep's
claims were taken over by another sweep (new deadline), the late ack must not release the
other sweep's claim, or a crash of that sweep would lose the connection.
]]
local deadline = tonumber(ARGV[1])
local released = 0
for i = 2, #ARGV do
  local cid = ARGV[i]
  local score = redis.call('ZSCORE', KEYS[1], cid)
  if score and tonumber(score) == deadline then
    redis.call('ZREM', KEYS[1], cid)
    redis.call('HDEL', KEYS[2], cid)
    released = released + 1
  end
end
return released
