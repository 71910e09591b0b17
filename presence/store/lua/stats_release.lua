--[[
stats_release.lua -- forget a stats claim once its counters are in the database.

KEYS[1]  {P}:stats:claim:<id>    HASH  the claimed counters
KEYS[2]  {P}:stats:claims        ZSET  flush id -> claim time ms

ARGV[1] flush id

Returns 1 when the claim was registered, 0 when another run released it already.

Only called after the transaction holding the counters and the FlushRecord committed
(or when a FlushRecord shows an earlier run committed them).
]]
redis.call('DEL', KEYS[1])
return redis.call('ZREM', KEYS[2], ARGV[1])
