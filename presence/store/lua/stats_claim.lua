--[[
stats_claim.lua -- take the live stats counters away from the hot path for one flush.

KEYS[1]  {P}:stats               HASH  live counters (heartbeat.lua, connect.lua, end.lua)
KEYS[2]  {P}:stats:claim:<id>    HASH  the same counters, owned by flush <id>
KEYS[3]  {P}:stats:claims        ZSET  flush id -> claim time ms, until the claim is released

ARGV[1] now (ms)   ARGV[2] flush id (unique per claim)

Returns 1 when counters were claimed, 0 when there was nothing to claim.

RENAME is atomic: every increment lands either in the claimed hash (this flush writes it to
the database) or in a fresh {P}:stats the hot path recreates (the next flush's job), never
in both and never in neither. Registering the id in the same script means a flush killed
right after the claim leaves a claim the next run finds and finishes.
]]
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return redis.error_reply('flush id already used: ' .. ARGV[2])
end
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('ZADD', KEYS[3], tonumber(ARGV[1]), ARGV[2])
return 1
